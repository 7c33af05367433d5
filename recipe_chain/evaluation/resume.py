"""Resuming an interrupted run: its partial results, keyed by everything that decides them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipe_chain.evaluation.results import CheckpointResult, EvalResults, GateLatencyPoint, TextRagThreshold
from recipe_chain.evaluation.selection import Selection
from recipe_chain.evaluation.text_rag_baseline import TextRagTuning

__all__ = ["PARTIAL_FILE", "JOURNAL_FILE", "RunState", "run_key", "save_partial", "load_partial"]

logger = logging.getLogger(__name__)

PARTIAL_FILE = "results.partial.json"
JOURNAL_FILE = "llm_outputs.partial.jsonl"


@dataclass
class RunState:
    t_done: int = 0
    edit_latencies: list[float] = field(default_factory=list)
    checkpoints: list[CheckpointResult] = field(default_factory=list)
    gate_latency: list[GateLatencyPoint] = field(default_factory=list)
    threshold: TextRagThreshold | None = None
    rag_tuning: TextRagTuning | None = None
    wall_s_before: float = 0.0


_VOLATILE_RUN_INFO = ("command", "git_commit")
"""Run-information keys that may differ between a run and its resumption."""


def run_key(config_dump: dict[str, Any], selection: Selection) -> str:
    stable = {k: v for k, v in config_dump.items() if k not in _VOLATILE_RUN_INFO}
    payload = json.dumps({"config": stable, "selection": selection.summary()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def save_partial(path: Path, config_key: str, state: RunState, results: EvalResults) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = results.model_dump(mode="json")
    payload["resume"] = {
        "config_key": config_key,
        "t_done": state.t_done,
        "edit_latencies_s": state.edit_latencies,
        "wall_time_s": results.wall_time_s,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    logger.info("Wrote partial results after %d edits to %s", state.t_done, path)


def load_partial(path: Path, config_key: str) -> RunState:
    if not path.is_file():
        logger.info("No partial results at %s; starting a fresh run", path)
        return RunState()
    raw = json.loads(path.read_text())
    resume = raw.get("resume") or {}
    if resume.get("config_key") != config_key:
        raise ValueError(
            f"{path} was written by a run with another configuration (data, seed, T, methods, models or "
            "settings differ); start over without --resume or use another --out"
        )
    threshold = raw.get("text_rag_threshold")
    rag_tuning = raw.get("text_rag_tuning")
    return RunState(
        rag_tuning=TextRagTuning.model_validate(rag_tuning) if rag_tuning else None,
        t_done=int(resume["t_done"]),
        edit_latencies=[float(x) for x in resume.get("edit_latencies_s", [])],
        checkpoints=[CheckpointResult.model_validate(c) for c in raw.get("checkpoints", [])],
        gate_latency=[GateLatencyPoint.model_validate(g) for g in raw.get("gate_latency", [])],
        threshold=TextRagThreshold.model_validate(threshold) if threshold else None,
        wall_s_before=float(resume.get("wall_time_s", 0.0)),
    )
