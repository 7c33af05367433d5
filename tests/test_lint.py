"""The code base passes its lint (ruff, configured in pyproject.toml) and plots stay optional."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_passes() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff is not None, "ruff is a dev dependency: pip install -e '.[dev]'"
    proc = subprocess.run([ruff, "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def test_reports_skip_plots_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    from recipe_chain.plots import plots_available
    from recipe_chain.training.state import plot_losses

    assert plots_available("anything")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"kind": "train", "step": 1, "total": 1.0}\n')
    with caplog.at_level(logging.WARNING, logger="recipe_chain.plots"):
        plot_losses(metrics, tmp_path / "losses.png")
    assert not (tmp_path / "losses.png").exists() and "recipe-chain[plots]" in caplog.text
