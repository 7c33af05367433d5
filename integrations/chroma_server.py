"""The Chroma server adapter, importable as ``integrations.chroma_server`` from a checkout.

It lives in :mod:`recipe_chain.integrations.chroma_server`; import it from there.
"""

from __future__ import annotations

from recipe_chain.integrations.chroma_server import ChromaServer, ChromaServerError, connect

__all__ = ["ChromaServer", "ChromaServerError", "connect"]
