"""recipe-chain."""
