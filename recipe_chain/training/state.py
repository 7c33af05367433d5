"""A run's files: the resumable state, the metrics log and its plot."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recipe_chain.errors import CheckpointMismatchError
from recipe_chain.plots import plots_available
from recipe_chain.training.config import LOSS_NAMES, TrainingConfig
from recipe_chain.training.step import Run

__all__ = ["STATE_FILE", "CACHE_FILE", "METRICS_FILE", "PLOT_FILE", "CHECKPOINT_DIR", "CONFIG_FILE",
           "save_state", "restore_state", "truncate_metrics", "plot_losses"]

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
CACHE_FILE = "locality_cache.pt"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "losses.png"
CHECKPOINT_DIR = "checkpoint"
CONFIG_FILE = "training_config.json"
_STATE_FORMAT = 1
# Fields that may change between a run and its resumption without changing its result
# (``steps`` changes the learning-rate schedule, so it is allowed with a warning).
_RESUMABLE_CHANGES = frozenset({"steps", "device", "threads", "eval_interval", "checkpoint_interval"})


def _atomic_torch_save(obj: object, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary run files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_state(run: Run) -> None:
    """Checkpoint: locality cache, then the resume state (atomic), then the editor export."""
    out = run.out_dir
    if run.config.weight_locality and run.cache.dirty:
        run.cache.save(out / CACHE_FILE)
    state = {
        "format": _STATE_FORMAT,
        "step": run.step,
        "wall_time": run.wall_time,
        "config": run.config.model_dump(mode="json"),
        "editor_config": run.editor.config.model_dump(mode="json"),
        "editor": {k: v.detach().cpu().clone() for k, v in run.editor.trainable_state_dict().items()},
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "queue": run.queue.state_dict(),
        "last_eval": run.last_eval,
    }
    _atomic_torch_save(state, out / STATE_FILE)
    run.editor.invalidate_fingerprint()
    run.editor.save_pretrained(out / CHECKPOINT_DIR)
    plot_losses(out / METRICS_FILE, out / PLOT_FILE)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A dumped TrainingConfig with its file paths made absolute (resume from another cwd)."""
    out = dict(config)
    for key in ("data", "extra_locality"):
        out[key] = [str(Path(p).resolve()) for p in out.get(key, [])]
    return out


def restore_state(run: Run, state: dict[str, Any]) -> None:
    if state.get("format") != _STATE_FORMAT:
        raise CheckpointMismatchError(f"Unknown trainer state format {state.get('format')!r} in {run.out_dir}")
    saved = _comparable(state["config"])
    for name, field in TrainingConfig.model_fields.items():
        saved.setdefault(name, field.default)  # a field added since the run started had its default then
    now = _comparable(run.config.model_dump(mode="json"))
    changed = sorted(k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        raise ValueError(
            f"Cannot resume {run.out_dir}: the run was started with different settings for {changed}. "
            "Use the same settings, a new output directory, or resume=False (--no-resume) to start over."
        )
    if saved.get("steps") != now["steps"]:
        logger.warning("Resuming with steps=%s (was %s): the learning-rate schedule changes", now["steps"],
                       saved.get("steps"))
    if state["editor_config"] != run.editor.config.model_dump(mode="json"):
        raise CheckpointMismatchError(f"The editor saved in {run.out_dir} has another configuration")
    missing, unexpected = run.editor.load_state_dict(state["editor"], strict=False)
    lost = sorted(set(run.editor.trainable_state_dict()).intersection(missing))
    if lost or unexpected:
        raise CheckpointMismatchError(
            f"Trainer state does not fit the editor: missing {lost[:5]}, unexpected {unexpected[:5]}"
        )
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.queue.load_state_dict(state["queue"])
    run.step = int(state["step"])
    run.wall_time = float(state["wall_time"])
    run.last_eval = state.get("last_eval")
    if run.config.weight_locality:
        run.cache.load(run.out_dir / CACHE_FILE)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the log lines of steps up to ``step`` (a resumed run rewrites the rest)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def plot_losses(metrics_path: Path, plot_path: Path) -> None:
    """Write the loss curves (moving average) and eval metrics to a PNG (matplotlib, Agg)."""
    if not metrics_path.is_file() or not plots_available("the loss plot"):
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train_rows, eval_rows = [], []
    for line in metrics_path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            (eval_rows if row.get("kind") == "eval" else train_rows).append(row)
    if not train_rows:
        return
    fig = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    window = max(1, len(train_rows) // 50)
    for name in (*LOSS_NAMES, "total"):
        pts = [(r["step"], r[name]) for r in train_rows if name in r]
        if not pts:
            continue
        steps, values = zip(*pts)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, label=name, linewidth=1.8 if name == "total" else 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (moving average of {window})")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_title("training losses")
    ax.legend(fontsize=8)
    ax2 = fig.add_subplot(1, 2, 2)
    if eval_rows:
        names = sorted({k for r in eval_rows for k in r if k not in {"kind", "step", "wall_time"}})
        for name in names:
            pts = [(r["step"], r[name]) for r in eval_rows if name in r]
            ax2.plot(*zip(*pts), marker="o", label=name)
        ax2.set_ylim(-0.02, 1.02)
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no sanity eval yet", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel("step")
    ax2.set_title("held-out sanity metrics")
    fig.tight_layout()
    tmp = plot_path.with_name(f".{plot_path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, plot_path)
