"""Checkpoint directories on disk: written atomically, loaded with a check that every trained tensor fits.

Shared by the editor (:mod:`recipe_chain.editor`) and the gate verifier (:mod:`recipe_chain.verifier`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from recipe_chain.errors import CheckpointMismatchError

__all__ = ["atomic_directory", "load_trained_state"]


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` in one rename.

    A failure leaves ``path`` as it was and removes the temporary directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a checkpoint is an ordinary, shareable directory
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_trained_state(module: nn.Module, weights: Path, trained: Iterable[str], what: str) -> None:
    """Load ``weights`` into ``module``; raise unless every ``trained`` tensor is there and nothing else.

    Raises:
        CheckpointMismatchError: Naming ``what`` and the first missing or unexpected tensors.
    """
    missing, unexpected = module.load_state_dict(load_file(str(weights)), strict=False)
    really_missing = sorted(set(trained).intersection(missing))
    if really_missing or unexpected:
        raise CheckpointMismatchError(
            f"{what} does not fit: missing {really_missing[:5]}, unexpected {unexpected[:5]}"
        )
