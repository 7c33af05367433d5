"""Whether the optional plotting dependency is there (``pip install 'recipe-chain[plots]'``).

Plots are a by-product of training and evaluation runs, so a missing matplotlib skips
them with one warning instead of failing a run that took an hour.
"""

from __future__ import annotations

import importlib.util
import logging

__all__ = ["plots_available"]

logger = logging.getLogger(__name__)


def plots_available(what: str) -> bool:
    """True when matplotlib can be imported; otherwise log that ``what`` is skipped and return False."""
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # a module set to None in sys.modules
        found = False
    if not found:
        logger.warning("matplotlib is not installed: %s skipped (pip install 'recipe-chain[plots]')", what)
    return found
