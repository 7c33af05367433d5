"""Helpers shared by the benchmark scripts: machine info, result writing, the CounterFact sample."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
COUNTERFACT_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "eval.json"


def counterfact_eval_sample(n: int, seed: int) -> list:
    """The first ``n`` examples of ``../shared/data/counterfact/eval.json`` after a seeded shuffle."""
    import random

    from recipe_chain.data import load_edit_examples

    examples = load_edit_examples(COUNTERFACT_EVAL)
    random.Random(seed).shuffle(examples)
    return examples[:n]


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_description(machine: dict[str, object]) -> str:
    """``"x86_64, AMD EPYC, AVX512"``: architecture, model and SIMD level of a :func:`machine_info`."""
    parts = (machine.get("processor"), machine.get("cpu_model"), machine.get("cpu_capability"))
    return ", ".join(str(p) for p in parts if p)


def machine_info() -> dict[str, object]:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the widest SIMD torch dispatches to
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_results(name: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path
