"""Several writing processes on one store directory, SIGKILLed at random, and a reader.

:func:`run_writer_faults` starts ``writers`` processes that each loop: open the store
(waiting for the directory's write lock), add 3 to 12 edits of facts the other
writers also edit, log each acknowledged edit (``add_edit`` returned) with an fsync,
close (each write waits 20 ms between its version lookup and its upsert, where
unserialised writers would race). A reader process opens the store read-only in a loop
and lists and gates. The
parent SIGKILLs a random writer every few seconds and starts a fresh one. At the end the
store is reopened and checked: every acknowledged edit is present with its target, each
fact has exactly one active version, and the counts agree with the records. The reader's
listings must never fail; its gates may be refused with ``StoreBusyError`` (Chroma's
vector index in another process lags the records a writer is adding), never with a raw
Chroma error.

Used by ``tests/test_store_writers.py`` (a short run) and
``benchmarks/bench_store_writers.py`` (the soak).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACTS = 4  # facts the writers share, so supersessions race

WRITER = textwrap.dedent(
    """
    import json, os, random, sys, time
    from recipe_chain.editor import RecipeEditor
    from recipe_chain.store import RecipeKnowledgeStore

    checkpoint, path, log_file, seed, write_behind, start_at, deadline, facts = sys.argv[1:]
    rng = random.Random(int(seed))
    # Widen the window between a write's version lookup and its upsert (20 ms), where two
    # unserialised writers would pick the same id: the lock must hold for slow writes too.
    upsert = RecipeKnowledgeStore._upsert
    def slow_upsert(self, batch):
        time.sleep(0.02)
        return upsert(self, batch)
    RecipeKnowledgeStore._upsert = slow_upsert
    editor = RecipeEditor.from_pretrained(checkpoint)
    time.sleep(max(0.0, float(start_at) - time.time()))  # the first writers all start together
    n = 0
    with open(log_file, "a") as log:
        while time.time() < float(deadline):
            store = RecipeKnowledgeStore(editor, path=path, lock_timeout=300, write_behind=write_behind == "1")
            for _ in range(rng.randint(3, 12)):
                prompt = f"Shared fact {rng.randrange(int(facts))} is"
                target = f"w{seed} n{n}"
                n += 1
                record = store.add_edit(prompt, target)
                log.write(json.dumps({"id": record.edit_id, "prompt": prompt, "target": target, "t": time.time()}) + "\\n")
                log.flush()
                os.fsync(log.fileno())
            store.close()
    """
)

READER = textwrap.dedent(
    """
    import json, sys, time, traceback
    from recipe_chain.editor import RecipeEditor
    from recipe_chain.store import RecipeKnowledgeStore

    from recipe_chain.errors import StoreBusyError

    checkpoint, path, out_file, deadline = sys.argv[1:]
    editor = RecipeEditor.from_pretrained(checkpoint)
    reads, gates, busy, errors = 0, 0, 0, []
    while time.time() < float(deadline):
        try:
            with RecipeKnowledgeStore(editor, path=path, read_only=True) as store:
                store.list_edits(limit=None, include_inactive=True)
                store.count()
                reads += 1
                try:
                    store.gate("Shared fact 3 is")
                    gates += 1
                except StoreBusyError:  # the documented answer while another process writes
                    busy += 1
        except Exception as exc:  # reported, and the test fails on any
            where = traceback.extract_tb(exc.__traceback__)
            frames = [f"{f.name}:{f.lineno}" for f in where if "recipe_chain" in f.filename][-3:]
            errors.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc} (at {' < '.join(reversed(frames))})")
        time.sleep(0.2)
    open(out_file, "w").write(json.dumps({"reads": reads, "gates": gates, "busy": busy, "errors": errors}))
    """
)


@dataclass
class WriterFaultReport:
    """What a run did and what the reopened store held."""

    mode: str
    writers: int
    seconds: float
    kills: int
    processes_started: int
    acknowledged: int
    acknowledged_present: int
    facts_written: int
    active: int
    records: int
    facts_with_one_active: int
    reader_reads: int
    reader_gates: int
    reader_gates_refused_busy: int
    longest_ack_gap_s: float  # the longest time without an acknowledged edit (a stall shows here)
    reader_errors: list[str] = field(default_factory=list)
    lost: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _spawn(script: str, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_writer_faults(
    checkpoint: Path, workdir: Path, *, seconds: float, writers: int = 4, write_behind: bool = False,
    kill_every: tuple[float, float] = (1.5, 4.0), seed: int = 0,
) -> WriterFaultReport:
    """Run the fault load for ``seconds`` and check the store; see the module docs."""
    from recipe_chain.editor import RecipeEditor
    from recipe_chain.store import RecipeKnowledgeStore

    rng = random.Random(seed)
    path, logs = workdir / "store", workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    RecipeKnowledgeStore(RecipeEditor.from_pretrained(checkpoint), path=path).close()  # created once, up front
    start = time.time()
    start_at = start + 8.0  # after every first process has loaded its models
    deadline = start_at + seconds
    started = 0

    def writer(slot: int) -> subprocess.Popen[bytes]:
        nonlocal started
        started += 1
        return _spawn(WRITER, str(checkpoint), str(path), str(logs / f"writer-{slot}-{started}.jsonl"),
                      str(1000 * slot + started), "1" if write_behind else "0", str(start_at), str(deadline),
                      str(FACTS))

    procs = {slot: writer(slot) for slot in range(writers)}
    reader_out = workdir / "reader.json"
    reader = _spawn(READER, str(checkpoint), str(path), str(reader_out), str(deadline))
    kills = 0
    failures: list[str] = []

    def check_exit(proc: subprocess.Popen[bytes]) -> None:
        """Record a process that ended on its own with an error (an exception, not our SIGKILL)."""
        code = proc.returncode
        if code not in (None, 0, -signal.SIGKILL):
            failures.append(proc.stderr.read().decode()[-2000:] if proc.stderr else f"exit {code}")

    next_kill = start_at + rng.uniform(*kill_every)
    while time.time() < deadline - 1:
        time.sleep(0.05)
        for slot, proc in procs.items():
            if proc.poll() not in (None, 0):
                check_exit(proc)
                procs[slot] = writer(slot)
        if time.time() >= next_kill:
            slot = rng.randrange(writers)
            procs[slot].send_signal(signal.SIGKILL)
            procs[slot].wait()
            check_exit(procs[slot])
            kills += 1
            procs[slot] = writer(slot)
            next_kill = time.time() + rng.uniform(*kill_every)
    for proc in [*procs.values(), reader]:
        try:
            code = proc.wait(timeout=max(60.0, seconds))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code not in (0, -signal.SIGKILL):
            check_exit(proc)
    if failures:
        raise AssertionError("a writer or the reader failed:\n" + "\n---\n".join(failures))

    acknowledged = [json.loads(line) for log in sorted(logs.glob("*.jsonl")) for line in log.read_text().splitlines()]
    times = sorted([start_at, *(a["t"] for a in acknowledged), deadline])
    gap = round(max(b - a for a, b in zip(times, times[1:])), 2)
    reader_report = json.loads(reader_out.read_text()) if reader_out.is_file() else {"reads": 0, "errors": ["no report"]}
    with RecipeKnowledgeStore(RecipeEditor.from_pretrained(checkpoint), path=path) as store:
        records = store.list_edits(limit=None, include_inactive=True)
        by_id = {r.edit_id: r for r in records}
        lost = [a for a in acknowledged if a["id"] not in by_id or by_id[a["id"]].target_new != a["target"]]
        prompts = {r.prompt for r in records}
        active = [r for r in records if r.active]
        one_active = sum(sum(r.prompt == p for r in active) == 1 for p in prompts)
        report = WriterFaultReport(
            mode="write-behind" if write_behind else "direct", writers=writers, seconds=round(time.time() - start, 1),
            kills=kills, processes_started=started, acknowledged=len(acknowledged),
            acknowledged_present=len(acknowledged) - len(lost), facts_written=len(prompts), active=store.count(),
            records=store.count(include_inactive=True), facts_with_one_active=one_active,
            reader_reads=int(reader_report["reads"]), reader_gates=int(reader_report.get("gates", 0)),
            reader_gates_refused_busy=int(reader_report.get("busy", 0)), longest_ack_gap_s=gap,
            reader_errors=list(reader_report["errors"]),
            lost=lost,
        )
        assert len(active) == report.active and len(records) == report.records
    return report
