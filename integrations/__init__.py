"""Optional adapters to engines that run outside the Python process.

Nothing here is imported by :mod:`recipe_chain` itself, and importing this
package has no side effects: each adapter imports its third-party dependency
(e.g. ``chromadb``) only when it is used.

Example:
    >>> from integrations import ChromaServer
    >>> with ChromaServer("./chroma-data") as server:  # doctest: +SKIP
    ...     client = server.client()
"""

from __future__ import annotations

from integrations.chroma_server import ChromaServer, ChromaServerError, connect

__all__ = ["ChromaServer", "ChromaServerError", "connect"]
