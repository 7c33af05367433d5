"""Fixtures shared by the knowledge-store test modules (a module may define its own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny import tiny_editor, tiny_llm


@pytest.fixture(scope="module")
def llm():  # noqa: ANN201
    """A tiny random Llama with the MiniLM vocabulary."""
    return tiny_llm()[0]


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a module's tiny backbone is saved (once per module)."""
    return tmp_path_factory.mktemp("tiny-backbone")


@pytest.fixture(scope="module")
def checkpoint(llm, backbone_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    """A tiny editor saved as a checkpoint, so a child process loads the very same networks."""
    path = tmp_path_factory.mktemp("ckpt") / "editor"
    tiny_editor(llm, backbone_dir, seed=0).save_pretrained(path)
    return path
