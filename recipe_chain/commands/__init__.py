"""Subcommand groups of the ``recipe-chain`` CLI (each exposes ``register(subparsers)``)."""
