"""The adapters of :mod:`recipe_chain.integrations`, importable as ``integrations`` from a checkout.

The installed package holds them as ``recipe_chain.integrations`` (a top-level
``integrations`` would collide in site-packages); import them from there.
"""

from __future__ import annotations

from recipe_chain.integrations import ChromaServer, ChromaServerError, connect

__all__ = ["ChromaServer", "ChromaServerError", "connect"]
