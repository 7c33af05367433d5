"""Fixtures shared by the knowledge-store test modules (a module may define its own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny import tiny_llm


@pytest.fixture(scope="module")
def llm():  # noqa: ANN201
    """A tiny random Llama with the MiniLM vocabulary."""
    return tiny_llm()[0]


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a module's tiny backbone is saved (once per module)."""
    return tmp_path_factory.mktemp("tiny-backbone")
