"""Store subcommands of ``recipe-chain``: ``edit``, ``ask``, ``list``, ``delete``, ``import``, ``demo``.

Every command opens the knowledge store named by the global options: ``--store PATH``
(an embedded Chroma store, default ``./recipe-store``) or ``--server URL`` (a Chroma
server; a bearer token is read from ``$RECIPE_CHAIN_SERVER_TOKEN`` when set), and the
``--namespace``. Models come from :func:`recipe_chain.models.load_models` (the default LLM
and the shipped checkpoint, or ``--checkpoint DIR``).

Handlers raise ``ValueError``/``RecipeChainError``/``FileNotFoundError``/``KeyError`` on
bad input; :func:`recipe_chain.cli.main` turns those into one line on stderr and exit
code 2. What a command reports goes to stdout.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recipe_chain.commands.argtypes import positive_int
from recipe_chain.commands.terminal import terminal_safe
from recipe_chain.data import DATA_FORMATS, iter_records, load_edit_examples
from recipe_chain.demo import DemoReport, run_demo
from recipe_chain.models import load_models
from recipe_chain.errors import RecipeChainError, StoreBusyError

__all__ = ["register", "open_store", "load_models", "format_table", "format_demo_report"]

SERVER_TOKEN_ENV = "RECIPE_CHAIN_SERVER_TOKEN"


# ---------------------------------------------------------------------------- helpers
def open_store(args: argparse.Namespace, editor: Any, *, reading: bool = False) -> Any:
    """Open the :class:`~recipe_chain.store.RecipeKnowledgeStore` the global options name.

    Args:
        args: The parsed command line.
        editor: The RECIPE editor.
        reading: The command only reads (``list``, ``ask``): when another process writes
            an embedded store, open it read-only instead of failing.

    Raises:
        ValueError: If both ``--store`` and ``--server`` are given, or the URL is bad.
        RecipeChainError: If the server cannot be reached.
    """
    from recipe_chain.store import DEFAULT_STORE_PATH, RecipeKnowledgeStore

    _check_store_options(args)
    namespace = getattr(args, "namespace", None) or "default"
    server = getattr(args, "server", None)
    path = getattr(args, "store", None)
    if server:
        from recipe_chain.integrations import connect

        try:
            client = connect(server, auth_token=os.environ.get(SERVER_TOKEN_ENV) or None)
        except (ValueError, RecipeChainError):
            raise
        except Exception as exc:  # chromadb raises assorted errors for an unreachable server
            raise RecipeChainError(f"Cannot reach the Chroma server at {server}: {exc}") from exc
        return RecipeKnowledgeStore(editor, client=client, namespace=namespace)
    try:
        return RecipeKnowledgeStore(editor, path=path or DEFAULT_STORE_PATH, namespace=namespace)
    except StoreBusyError:
        if not reading:
            raise
        return RecipeKnowledgeStore(editor, path=path or DEFAULT_STORE_PATH, namespace=namespace, read_only=True)


def _check_store_options(args: argparse.Namespace) -> None:
    if getattr(args, "server", None) and getattr(args, "store", None):
        raise ValueError("Give either --store PATH or --server URL, not both")


def _models(args: argparse.Namespace) -> Any:
    """Models for a command; checks the cheap options first, so bad input fails before loading."""
    _check_store_options(args)
    # Looked up through the module global so tests can monkeypatch ``load_models``.
    return load_models(getattr(args, "checkpoint", None), allow_untrained=getattr(args, "allow_untrained", False))


def _non_empty(value: str, what: str) -> str:
    """``value`` unchanged; ``ValueError`` if it is empty or blank."""
    if not value or not value.strip():
        raise ValueError(f"{what} must not be empty")
    return value




def _display_line(text: str) -> str:
    """The first non-blank line of a generated answer (for one-line table cells)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "(blank)"


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], max_widths: Sequence[int] | None = None) -> str:
    """A plain aligned text table: header, a rule, one line per row.

    Args:
        headers: Column titles.
        rows: Cells (converted with ``str``), one sequence per row.
        max_widths: Per column, the widest a cell may be (longer cells are clipped
            with "…"); ``None`` for no limit.

    Returns:
        The table, lines joined by newlines (no trailing newline).
    """
    n = len(headers)
    limits = list(max_widths) if max_widths is not None else [10**6] * n
    cells = [[_clip(str(c), limits[i]) for i, c in enumerate(row)] for row in rows]
    widths = [max([len(headers[i])] + [len(r[i]) for r in cells]) for i in range(n)]
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in cells]
    return "\n".join(lines)


def _similarities(hit: float | None, sentinel: float | None, verifier: float | None = None) -> str:
    if verifier is not None:  # two-stage gate: the verifier's probability decided
        return f"P={verifier:.2f}"
    if hit is None or sentinel is None:
        return "-"
    return f"{hit:.2f}{'>' if hit > sentinel else '<='}{sentinel:.2f}"


# ---------------------------------------------------------------------------- commands
def cmd_edit(args: argparse.Namespace) -> int:
    prompt = _non_empty(args.prompt, "PROMPT").strip()
    target = _non_empty(args.target, "TARGET").strip()
    models = _models(args)
    store = open_store(args, models.editor)
    try:
        record = store.add_edit(prompt, target, subject=args.subject, edit_id=args.id)
    finally:
        store.close()
    print(f"Added edit {terminal_safe(record.edit_id)}: {terminal_safe(record.statement)}")
    if record.previous_targets:
        earlier = ", ".join(terminal_safe(t) for t in record.previous_targets)
        print(f"  (replaces earlier target(s) of the same fact: {earlier})")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from recipe_chain.llms import RecipeEditedLLM

    question = _non_empty(args.question, "QUESTION")
    models = _models(args)
    store = open_store(args, models.editor, reading=True)
    try:
        llm = RecipeEditedLLM(
            store=store, llm=models.llm, tokenizer=models.tokenizer, editor=models.editor,
            max_new_tokens=args.max_new_tokens, temperature=0.0,
        )
        generation = llm.generate([question]).generations[0][0]
    finally:
        store.close()
    info = generation.generation_info or {}
    print(terminal_safe(generation.text.strip(), keep_newlines=True) or "(empty answer)")
    print("--")
    hit, sentinel = info.get("hit_similarity"), info.get("sentinel_similarity")
    margin = info.get("margin") or 0.0
    threshold = f"sentinel {sentinel:.3f}" + (f" + margin {margin:.3f}" if margin else "") if sentinel is not None else ""
    prob, tau = info.get("verifier_probability"), info.get("verifier_threshold")
    if info.get("edit_fired"):
        print(f"edit fired: {terminal_safe(str(info.get('edit_id')))}  \"{terminal_safe(str(info.get('statement')))}\"")
        if not info.get("gated", True):
            print(f"  similarity {hit:.3f} (gate off)")
        elif tau is not None:
            print(f"  verifier P={prob:.3f} > {tau:.3f} (best similarity {hit:.3f}, {threshold})")
        else:
            print(f"  similarity {hit:.3f} > {threshold}")
    elif hit is None:
        print("no edit fired: the store has no edits in this namespace")
    elif tau is not None and prob is not None:
        print(f"no edit fired: verifier P={prob:.3f} <= {tau:.3f} (best similarity {hit:.3f}, {threshold})")
    elif tau is not None:
        print(f"no edit fired: no candidate near the sentinel (best similarity {hit:.3f}, {threshold})")
    else:
        print(f"no edit fired: best similarity {hit:.3f} <= {threshold}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    models = _models(args)
    store = open_store(args, models.editor, reading=True)
    try:
        records = store.list_edits(limit=args.limit, include_inactive=args.all)
        total = store.count(include_inactive=args.all)
        identity = store.identity
    finally:
        store.close()
    kind = "edits" if args.all else "active edits"
    if not records:
        print(f"No {kind} in {terminal_safe(identity)}")
        return 0
    rows = [
        [terminal_safe(s) for s in (r.edit_id, "yes" if r.active else f"no -> {r.superseded_by}", r.statement)]
        + [r.created_at[:19]]
        for r in records
    ]
    print(format_table(["ID", "ACTIVE", "STATEMENT", "CREATED (UTC)"], rows, [40, 30, 70, 19]))
    print(f"{len(records)} of {total} {kind} in {terminal_safe(identity)}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    edit_id = _non_empty(args.id, "ID").strip()
    models = _models(args)
    store = open_store(args, models.editor)
    try:
        record = store.delete_edit(edit_id)
    finally:
        store.close()
    print(f"Deleted edit {terminal_safe(record.edit_id)}: {terminal_safe(record.statement)}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    path = Path(args.file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No such data file: {path}")
    examples = load_edit_examples(path, format=args.format, limit=args.limit, on_invalid="skip")
    considered = len(iter_records(path))
    if args.limit is not None:
        considered = min(considered, args.limit)
    skipped = considered - len(examples)
    if not examples:
        raise ValueError(f"{path} holds no valid edits ({skipped} invalid record(s) skipped)")
    models = _models(args)
    store = open_store(args, models.editor)
    try:
        records = store.add_edits(examples, progress=True)  # a tqdm progress bar on stderr
        identity = store.identity
    finally:
        store.close()
    fmt = examples[0].source_format
    print(f"Imported {len(records)} edits ({fmt}) from {terminal_safe(str(path))} into {terminal_safe(identity)}")
    if skipped:
        print(f"WARNING: skipped {skipped} invalid record(s) of {considered} (each is logged above)")
    return 0


def format_demo_report(report: DemoReport, width: int = 24) -> str:
    """The demo's side-by-side table and a short legend, as text.

    Args:
        report: What :func:`recipe_chain.demo.run_demo` returned.
        width: Widest answer cell (longer answers are clipped with "…").
    """
    rows = []
    for r in report.rows:
        expected = r.target_new if r.kind in ("edit", "paraphrase") else (r.reference or "")
        rows.append([
            r.kind,
            r.question,
            expected,
            _display_line(r.before),
            ("yes " if r.fired else "no ") + _similarities(r.hit_similarity, r.sentinel_similarity, r.verifier_probability),
            _display_line(r.after),
            "yes" if r.rag_retrieved else "no",
            _display_line(r.text_rag),
        ])
    headers = ["KIND", "QUESTION", "NEW / REF", "BEFORE (plain)", "FIRED hit>KS / P", "AFTER (RECIPE)", "CTX", "TEXT RAG"]
    lines = []
    if not report.trained:
        lines.append("WARNING: UNTRAINED editor (no shipped checkpoint; --allow-untrained): "
                     "retrieval, gate and prompt vectors are random.")
    lines.append(f"LLM: {report.llm_id}   checkpoint: {report.checkpoint or 'untrained fallback'}")
    lines.append("Edits imported:")
    lines += [f"  {edit_id}  {statement}" for edit_id, statement in report.edits]
    lines.append("")
    lines.append(format_table(headers, rows, [10, 44, 14, width, 17, width, 3, width]))
    lines.append("")
    fired_ok = sum(r.fired == r.should_fire for r in report.rows)
    lines.append(
        f"Gate as intended (fires on edit/paraphrase, not on locality/unrelated): {fired_ok}/{len(report.rows)}. "
        "CTX: text RAG put the statement in the prompt."
    )
    lines.append("Timing (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items()))
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    if getattr(args, "server", None):
        raise ValueError("The demo always uses a fresh embedded store; do not pass --server")
    start = time.perf_counter()
    report = run_demo(
        store_path=getattr(args, "store", None),
        n_edits=args.n_edits,
        data_path=args.data,
        questions_path=args.questions,
        n_unrelated=args.n_unrelated,
        max_new_tokens=args.max_new_tokens,
        models=lambda: _models(args),
    )
    print(format_demo_report(report, width=args.width))
    print(f"Demo wall time: {time.perf_counter() - start:.1f} s (including model loading)")
    return 0


# ---------------------------------------------------------------------------- registration
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the store subcommands to the ``recipe-chain`` parser."""
    p = subparsers.add_parser(
        "edit", help="Add an edit: PROMPT now continues with TARGET.",
        description="Add a knowledge edit, e.g.: recipe-chain edit \"The mother tongue of Danielle Darrieux is\" English",
    )
    p.add_argument("prompt", metavar="PROMPT", help="The prompt whose continuation changes.")
    p.add_argument("target", metavar="TARGET", help="The new continuation (target_new).")
    p.add_argument("--subject", default=None, help="The edited subject (optional).")
    p.add_argument("--id", default=None, help="An explicit edit id (default: generated).")
    p.set_defaults(func=cmd_edit)

    p = subparsers.add_parser(
        "ask", help="Ask the edited LLM; shows which edit fired and why.",
        description="Generate with the RECIPE-edited LLM and report the gate's decision.",
    )
    p.add_argument("question", metavar="QUESTION")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="Tokens to generate (default 32).")
    p.set_defaults(func=cmd_ask)

    p = subparsers.add_parser("list", help="List the edits in the namespace.")
    p.add_argument("--limit", type=positive_int, default=50, help="Show at most N edits (default 50).")
    p.add_argument("--all", action="store_true", help="Include inactive (superseded) edits.")
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser("delete", help="Delete (undo) an edit by id.")
    p.add_argument("id", metavar="ID")
    p.set_defaults(func=cmd_delete)

    p = subparsers.add_parser(
        "import", help="Import edits from a CounterFact, ZsRE or KnowEdit file.",
        description="Import edits from a .json/.jsonl benchmark file; invalid records are skipped with a warning.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--limit", type=positive_int, default=None, help="Import only the first N records.")
    p.add_argument("--format", default="auto", choices=("auto", *DATA_FORMATS),
                   help="Record format (default: detected from the first record).")
    p.set_defaults(func=cmd_import)

    p = subparsers.add_parser(
        "demo", help="Edit a few real CounterFact facts and compare answers (before/after/text RAG).",
        description="Imports a handful of CounterFact edits into a fresh embedded store (a temporary "
        "directory unless --store is given) and prints the answers before and after editing.",
    )
    p.add_argument("--n-edits", type=positive_int, default=5, help="Edits to import (default 5).")
    p.add_argument("--data", default=None, help="Edits file (default ../shared/data/counterfact/eval.json).")
    p.add_argument("--questions", default=None, help="NQ questions file (default ../shared/data/general/nq-open.jsonl).")
    p.add_argument("--n-unrelated", type=int, default=1, help="NQ questions to add (default 1).")
    p.add_argument("--max-new-tokens", type=positive_int, default=8, help="Tokens per answer (default 8).")
    p.add_argument("--width", type=positive_int, default=24, help="Widest answer cell in the table (default 24).")
    p.set_defaults(func=cmd_demo)
