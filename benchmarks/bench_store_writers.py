"""Soak: four writing processes on one store directory, SIGKILLed at random, while a fifth reads.

The long run of ``tests/test_store_writers.py`` (see ``tests/writer_faults.py``): for
each mode (direct writes, write-behind) it runs the load for ``--seconds``, then reopens
the store and checks that every acknowledged edit is present with its target, that each
fact has exactly one active version and that the counts agree.

Run:  .venv/bin/python benchmarks/bench_store_writers.py [--seconds 300]
Writes benchmarks/results/store_writers.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import machine_info, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="length of each mode's run")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from tiny import tiny_editor, tiny_llm
    from writer_faults import run_writer_faults

    start = time.perf_counter()
    reports = []
    with tempfile.TemporaryDirectory(prefix="store-writers-") as tmp:
        work = Path(tmp)
        llm = tiny_llm()[0]
        checkpoint = work / "editor"
        tiny_editor(llm, work / "backbone", seed=0).save_pretrained(checkpoint)
        for write_behind in (False, True):
            report = run_writer_faults(checkpoint, work / ("wb" if write_behind else "direct"), seconds=args.seconds,
                                       writers=args.writers, write_behind=write_behind, seed=args.seed)
            print(report.as_dict(), flush=True)
            reports.append(report.as_dict())
    command = "python benchmarks/bench_store_writers.py " + " ".join(sys.argv[1:])
    payload = {"command": command.strip(), "reports": reports, "machine": machine_info(),
               "seconds": round(time.perf_counter() - start, 1)}
    md = [
        "# Several writing processes on one store, SIGKILLed at random", "",
        f"`{payload['command']}`, {payload['machine']['date']}, {payload['seconds'] / 60:.1f} min. Tiny random "
        f"editor (the store's behaviour does not depend on the model). {args.writers} writer processes loop: open "
        "the store (waiting for the directory's write lock), add 3-12 edits of 4 shared facts (each write waits "
        "20 ms between its version lookup and its upsert), log each acknowledged edit with an fsync, close. The "
        "parent SIGKILLs a random writer every 1.5-4 s and starts a fresh one; a reader process opens the store "
        "read-only in a loop and lists, counts and gates.", "",
        "| mode | seconds | writer processes | SIGKILLs | acknowledged | acknowledged and present, unchanged | records "
        "| facts | facts with exactly one active version | reader listings | reader gates: answered / StoreBusyError "
        "| reader errors | longest time without an acknowledged edit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        md.append(f"| {r['mode']} | {r['seconds']} | {r['processes_started']} | {r['kills']} | {r['acknowledged']} "
                  f"| {r['acknowledged_present']} | {r['records']} | {r['facts_written']} | {r['facts_with_one_active']} "
                  f"| {r['reader_reads']} | {r['reader_gates']} / {r['reader_gates_refused_busy']} "
                  f"| {len(r['reader_errors'])} | {r['longest_ack_gap_s']} s |")
    errors = [e for r in reports for e in r["reader_errors"]]
    if errors:
        md += ["", "Reader errors (first 5):", *[f"- `{e}`" for e in errors[:5]]]
    write_results("store_writers", payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
