"""Four writing processes on one store directory, SIGKILLed at random, while a fifth reads.

Every edit a writer saw acknowledged must be in the reopened store with its target, each
fact must have exactly one active version, and the counts must match the records; in the
direct and the write-behind mode. ``RECIPE_CHAIN_WRITER_SECONDS`` sets each run's length
(default 20 s of load, about 35 s a mode with start-up, to keep the suite's share near a minute); the soak is
``benchmarks/bench_store_writers.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from writer_faults import run_writer_faults

pytestmark = pytest.mark.timeout(600)

SECONDS = float(os.environ.get("RECIPE_CHAIN_WRITER_SECONDS", "20"))


@pytest.mark.parametrize("write_behind", [False, True], ids=["direct", "write-behind"])
def test_killed_writers_never_lose_an_acknowledged_edit(checkpoint: Path, tmp_path: Path, write_behind: bool) -> None:
    report = run_writer_faults(checkpoint, tmp_path, seconds=SECONDS, write_behind=write_behind, seed=1)
    print(report.as_dict())
    assert report.kills >= 3 and report.acknowledged >= 5, report  # the load really ran
    assert report.lost == [], report.lost[:5]
    assert report.acknowledged_present == report.acknowledged
    assert report.facts_with_one_active == report.facts_written == report.active
    assert report.reader_errors == [] and report.reader_reads > 0, report.reader_errors[:3]
