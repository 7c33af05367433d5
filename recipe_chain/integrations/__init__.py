"""Optional adapters to engines that run outside the Python process.

Nothing else in :mod:`recipe_chain` imports this package, and importing it has no side
effects: each adapter imports its third-party dependency (e.g. ``chromadb``) only when it
is used. (A checkout also makes it importable as the top-level ``integrations``.)

Example:
    >>> from recipe_chain.integrations import ChromaServer
    >>> with ChromaServer("./chroma-data") as server:  # doctest: +SKIP
    ...     client = server.client()
"""

from __future__ import annotations

from recipe_chain.integrations.chroma_server import ChromaServer, ChromaServerError, connect

__all__ = ["ChromaServer", "ChromaServerError", "connect"]
