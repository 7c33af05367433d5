"""Writing an evaluation's results: ``results.json``, a markdown report and PNG plots.

:func:`write_report` puts into a directory:

* ``results.json`` -- :class:`~recipe_chain.evaluation.harness.EvalResults`, every number
  plus the full configuration;
* ``results.md`` -- :func:`markdown_report`: tables with one row per method (quality,
  gate statistics, cost), the metrics against ``T``, gate latency against store size;
* ``metrics_vs_T.png`` -- each metric against ``T`` (log x axis), one line per method;
* ``gate_latency_vs_store_size.png`` -- gate latency (p50 and p95) against store size.

Plots are drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas, so nothing
touches pyplot's global state or needs a display.

Example:
    >>> from recipe_chain.evaluation.report import write_report
    >>> paths = write_report(results, "benchmarks/results/eval/cf-T100")  # doctest: +SKIP
    >>> sorted(paths)  # doctest: +SKIP
    ['gate_latency', 'json', 'markdown', 'metrics_vs_T']
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from recipe_chain.plots import plots_available
from recipe_chain.evaluation.results import CheckpointResult, EvalResults, MethodMetrics

__all__ = [
    "PLOTTED_METRICS",
    "markdown_report",
    "plot_metrics_vs_t",
    "plot_gate_latency",
    "write_report",
    "write_json",
]

logger = logging.getLogger(__name__)

PLOTTED_METRICS: tuple[tuple[str, str, Callable[[MethodMetrics], float | None]], ...] = (
    ("reliability", "Reliability", lambda m: m.reliability),
    ("generality", "Generality", lambda m: m.generality),
    ("locality", "Locality", lambda m: m.locality),
    ("em_prompt", "EM (prompt, greedy)", lambda m: m.em_prompt),
    ("em_paraphrase", "EM (paraphrase, greedy)", lambda m: m.em_paraphrase),
    ("locality_unchanged", "Locality output unchanged", lambda m: m.locality_unchanged),
    ("answer_accuracy", "Answer accuracy (prompt)", lambda m: m.answer_accuracy),
    ("locality_kept", "Locality kept (first sentence)", lambda m: m.locality_kept),
    ("correct_hit_prompt", "Correct hit (prompt)", lambda m: m.gate.correct_hit_prompt),
    ("correct_hit_paraphrase", "Correct hit (paraphrase)", lambda m: m.gate.correct_hit_paraphrase),
    ("false_fire_locality", "False fire (locality)", lambda m: m.gate.false_fire_locality),
    ("false_fire_general", "False fire (general questions)", lambda m: m.gate.false_fire_general),
)
"""``(key, title, getter)`` of each metric drawn against ``T``."""


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_DASHES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1)), (0, (7, 2, 1, 2)))


def _f(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _ms(summary: dict[str, Any] | None, key: str) -> str:
    if not summary or summary.get(key) is None:
        return "–"
    return f"{1000 * summary[key]:.1f}"


def _edited_fact_note(final: CheckpointResult) -> list[str]:
    """A paragraph on the locality prompts left out of Locality because they ask an edited fact."""
    n_edited = final.counts.get("locality_edited_fact", 0)
    if not n_edited:
        return []
    n_all = n_edited + final.counts.get("locality", 0)
    everything = ", ".join(f"`{m}` {_f(mm.locality_all_prompts)}" for m, mm in final.methods.items())
    return ["", f"{n_edited} of {n_all} locality prompts ask a fact that another edit in the store changed (the "
            "store holds an edit of the subject they name whose old answer is their reference answer; "
            "`recipe_chain/evaluation/edited_facts.py`). There the edited answer is the right one, so they are "
            "left out of Locality, locality kept, Locality unchanged and the locality false fires. Locality over "
            f"every locality prompt: {everything}."]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _final(results: EvalResults) -> CheckpointResult:
    if results.final is not None:
        return results.final
    if not results.checkpoints:
        raise ValueError("the results hold no measurement yet")
    return results.checkpoints[-1]


def markdown_report(results: EvalResults) -> str:
    """The human-readable report of a run (tables with one row per method).

    Args:
        results: Complete or partial results (partial: the last checkpoint is shown).

    Returns:
        Markdown text.

    Raises:
        ValueError: If the results hold no measurement.
    """
    final = _final(results)
    cfg = results.config
    ev = cfg.get("eval", {})
    data = cfg.get("data", {}) or {}
    lines: list[str] = []
    status = "" if results.complete else " (PARTIAL: run in progress)"
    lines.append(f"# Lifelong editing: {Path(str(data.get('path', 'data'))).name}, T = {final.t}{status}")
    lines.append("")
    trained = cfg.get("trained")
    lines.append(
        f"LLM `{cfg.get('llm_id')}`; RECIPE checkpoint `{cfg.get('checkpoint') or '-'}` "
        f"(fingerprint `{cfg.get('editor_fingerprint')}`{'' if trained is not False else ', UNTRAINED'}); "
        f"seed {ev.get('seed')}; {final.n_measured} examples measured after {final.t} sequential edits; "
        f"{final.counts.get('general', 0)} general questions. "
        f"Data sha256 `{str(data.get('sha256', ''))[:16]}`."
    )
    if cfg.get("command"):
        lines += ["", f"Command: `{cfg['command']}`"]
    methods = list(final.methods)

    lines += ["", f"## Quality at T = {final.t}", ""]
    lines += _table(
        ["method", "Reliability", "Generality", "Locality", "answer acc. prompt", "answer acc. paraphrase",
         "locality kept", "EM prompt", "EM paraphrase", "Locality unchanged"],
        [
            [f"`{m}`", _f(mm.reliability), _f(mm.generality), _f(mm.locality), _f(mm.answer_accuracy),
             _f(mm.answer_accuracy_paraphrase), _f(mm.locality_kept), _f(mm.em_prompt),
             _f(mm.em_paraphrase), _f(mm.locality_unchanged)]
            for m, mm in final.methods.items()
        ],
    )
    lines += ["", "Reliability/Generality: teacher-forced token accuracy of the new target; Locality: share of the "
              "unedited model's argmax tokens kept; answer accuracy: the first sentence of the greedy "
              f"{ev.get('gen_tokens', 16)}-token output (case, accents and punctuation folded) names the new target "
              "and not the old answer; locality kept: that first sentence equals the unedited model's; EM: greedy "
              "output starts with the new target; Locality unchanged: greedy output identical to the unedited "
              f"model's. Generated outputs: {final.counts.get('generation_examples', final.n_measured)} examples."]
    lines += _edited_fact_note(final)
    answered = final.counts.get("general_answered", 0)
    if answered:
        lines += ["", f"General ability: greedy answer accuracy on {answered} general questions (the first sentence "
                  "names a reference answer). An empty store never fires, so with it every method answers as "
                  "`no-edit`; with the T edits in the store:", ""]
        lines += _table(
            ["method", "answer accuracy", "change vs empty store", "95 % interval of the change"],
            [
                [f"`{m}`", _f(mm.general_answer_accuracy),
                 "–" if mm.general_answer_delta is None else f"{mm.general_answer_delta:+.3f}",
                 "–" if mm.general_answer_delta_ci95 is None else f"±{mm.general_answer_delta_ci95:.3f}"]
                for m, mm in final.methods.items()
            ],
        )

    chatted = final.counts.get("chat_answered", 0)
    if chatted:
        lines += ["", f"The chat path: the prompts and paraphrases of {chatted} generated examples asked as the user "
                  "turn of the LLM's chat template (as `RecipeEditedChatModel` asks them; gated on that turn, "
                  "text-RAG in its chat format), greedy answer accuracy:", ""]
        lines += _table(
            ["method", "chat answer acc. prompt", "chat answer acc. paraphrase"],
            [[f"`{m}`", _f(mm.chat_answer_accuracy), _f(mm.chat_answer_accuracy_paraphrase)]
             for m, mm in final.methods.items()],
        )

    lines += ["", "## Gate statistics", ""]
    lines += _table(
        ["method", "hit rate (prompt)", "correct hit (prompt)", "correct hit (paraphrase)",
         "false fire (locality)", "false fire (general)", "fires on a locality prompt that asks an edited fact"],
        [
            [f"`{m}`", _f(mm.gate.hit_rate), _f(mm.gate.correct_hit_prompt), _f(mm.gate.correct_hit_paraphrase),
             _f(mm.gate.false_fire_locality), _f(mm.gate.false_fire_general), _f(mm.gate.fire_on_edited_fact)]
            for m, mm in final.methods.items()
        ],
    )

    lines += ["", "## Cost per query", ""]
    lines += _table(
        ["method", "+ text tokens (LLM)", "+ text tokens (cl100k)", "+ virtual tokens",
         "score p50 / p95 ms", f"gen{ev.get('gen_tokens', 16)} p50 / p95 ms", "tokens generated"],
        [
            [
                f"`{m}`",
                _f(mm.added_tokens.llm_text, 2),
                _f(mm.added_tokens.cl100k, 2),
                _f(mm.added_tokens.virtual, 2),
                f"{_ms(mm.latency.score_s if mm.latency else None, 'p50')} / "
                f"{_ms(mm.latency.score_s if mm.latency else None, 'p95')}",
                f"{_ms(mm.latency.generate_s if mm.latency else None, 'p50')} / "
                f"{_ms(mm.latency.generate_s if mm.latency else None, 'p95')}",
                _f(mm.latency.generated_tokens_mean if mm.latency else None, 1),
            ]
            for m, mm in final.methods.items()
        ],
    )
    if "no-edit" in final.methods and final.methods["no-edit"].latency is not None:
        base = final.methods["no-edit"].latency.generate_s.get("p50")
        overheads = []
        for m, mm in final.methods.items():
            if m != "no-edit" and mm.latency is not None and base and mm.latency.generate_s.get("p50") is not None:
                overheads.append(f"`{m}` {100 * (mm.latency.generate_s['p50'] / base - 1):+.1f}%")
        if overheads:
            lines += ["", "Added generation latency vs `no-edit` (p50): " + ", ".join(overheads) + "."]
    el = results.edit_latency_s
    lines += [
        "",
        f"Edit latency (`store.add_edit`, {el.get('n')} edits): p50 {_ms(el, 'p50')} ms, p95 {_ms(el, 'p95')} ms. "
        f"Peak memory {_f(results.peak_memory_mib, 0)} MiB. Wall time {results.wall_time_s / 60:.1f} min.",
    ]
    if results.text_rag_tuning is not None:
        tu = results.text_rag_tuning
        th2 = tu.threshold
        fmt_scores = "; ".join(
            f"{name}: {_f(v.get('score'))} (answer accuracy {_f(v.get('answer_accuracy'))}, locality kept "
            f"{_f(v.get('locality_kept'))})"
            for name, v in tu.format_scores.items()
        )
        lines += [
            "",
            "## The text-RAG baseline",
            "",
            f"`text-rag`: {tu.retrieval}. Threshold {th2.value:.4f}, tuned on dev by balanced accuracy "
            f"{th2.balanced_accuracy:.3f} (fire on {th2.tpr:.3f} of {th2.n_positive} dev prompts/paraphrases, quiet on "
            f"{th2.tnr:.3f} of {th2.n_negative} dev locality prompts and general questions; dev rows {tu.dev_rows}). "
            f"Prompt format `{tu.format}`"
            + (f", the better on {tu.format_dev_examples} dev examples ({fmt_scores})" if fmt_scores else "")
            + ". `text-rag-top1` always puts the top-1 statement in front; `text-rag-oracle` the example's own "
            "statement, in the same format.",
        ]
    if results.text_rag_threshold is not None:
        th = results.text_rag_threshold
        lines += [
            "",
            f"text-rag-recipe-sim threshold {th.value:.4f}, tuned on {th.dev_size} dev examples ({th.dev_source}): dev "
            f"objective {th.dev_objective:.3f} (hit accuracy {_f(th.dev_hit_accuracy)}, non-fire "
            f"{_f(th.dev_non_fire)}). {th.procedure}",
        ]

    if final.diagnostics:
        lines += ["", "## Diagnostics", ""]
        lines += _table(["figure", "value"], [[k, _f(v)] for k, v in final.diagnostics.items()])
        cond_rows = [
            [f"`{m}`"] + [_f(mm.conditional.get(k)) for k in (
                "reliability_given_correct_hit", "generality_given_correct_hit",
                "locality_given_fire", "locality_given_no_fire")]
            for m, mm in final.methods.items() if mm.conditional
        ]
        if cond_rows:
            lines += [""]
            lines += _table(
                ["method", "Reliability given correct hit", "Generality given correct hit", "Locality when fired",
                 "Locality when not fired"],
                cond_rows,
            )

    if len(results.checkpoints) > 1 or not results.complete:
        lines += ["", "## Metrics against T", ""]
        rows = []
        for cp in results.checkpoints:
            for m in methods:
                mm = cp.methods.get(m)
                if mm is None:
                    continue
                rows.append([
                    str(cp.t) + (" (sub)" if cp.subsampled else ""), f"`{m}`", _f(mm.reliability), _f(mm.generality),
                    _f(mm.locality), _f(mm.answer_accuracy), _f(mm.locality_kept), _f(mm.em_prompt),
                    _f(mm.gate.correct_hit_prompt), _f(mm.gate.false_fire_locality), _f(mm.gate.false_fire_general),
                ])
        lines += _table(
            ["T", "method", "Rel", "Gen", "Loc", "answer acc", "loc kept", "EM p", "correct hit", "FF loc", "FF gen"],
            rows,
        )
        subs = [cp for cp in results.checkpoints if cp.subsampled]
        if subs:
            lines += ["", f"(sub): measured on a seeded random subsample of {subs[0].n_measured} of the first T edits."]

    if results.gate_latency:
        lines += ["", "## Gate latency against store size", ""]
        lines += _table(
            ["store size", "p50 ms", "p95 ms"],
            [[str(p.store_size), _f(None if p.p50_s is None else 1000 * p.p50_s, 1),
              _f(None if p.p95_s is None else 1000 * p.p95_s, 1)] for p in results.gate_latency],
        )
    return "\n".join(lines).rstrip() + "\n"


def _figure(rows: int, cols: int, size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig: Any, path: str | os.PathLike[str], *, legend_from: Any = None) -> Path:
    """Save ``fig`` as PNG at ``path`` (parents created), with one shared legend below if asked."""
    if legend_from is not None:
        handles, labels = legend_from.get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncol=len(labels))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_metrics_vs_t(results: EvalResults, path: str | os.PathLike[str]) -> Path:
    """Each metric against ``T`` (log x axis), one line per method; saved as PNG.

    Returns:
        The written path.

    Raises:
        ValueError: If the results hold no checkpoint.
    """
    if not results.checkpoints:
        raise ValueError("no checkpoints to plot")
    methods = list(results.checkpoints[-1].methods)
    cols = 5
    rows = -(-len(PLOTTED_METRICS) // cols)
    fig, axes = _figure(rows, cols, (4.0 * cols, 3.2 * rows))
    for k, (_, title, get) in enumerate(PLOTTED_METRICS):
        ax = axes[k // cols][k % cols]
        for j, m in enumerate(methods):
            pts = [(cp.t, get(cp.methods[m])) for cp in results.checkpoints if m in cp.methods]
            pts = [(t, v) for t, v in pts if v is not None]
            if pts:  # distinct markers and dashes: methods with equal values stay visible
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=m, alpha=0.85,
                        marker=_MARKERS[j % len(_MARKERS)], linestyle=_DASHES[j % len(_DASHES)],
                        markersize=8 - j, linewidth=2.2 - 0.3 * j)
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("T (sequential edits)")
        ax.grid(True, alpha=0.3)
    for k in range(len(PLOTTED_METRICS), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    return _save(fig, path, legend_from=axes[0][0])


SCALE_METRICS: tuple[tuple[str, str, Callable[[MethodMetrics], float | None]], ...] = (
    ("locality", "Locality (teacher-forced)", lambda m: m.locality),
    ("false_fire_locality", "False fires on neighbour prompts", lambda m: m.gate.false_fire_locality),
    ("false_fire_general", "False fires on NQ questions", lambda m: m.gate.false_fire_general),
)
"""What :func:`plot_scale` draws: what a growing store costs unrelated prompts."""


def plot_scale(results: EvalResults, path: str | os.PathLike[str]) -> Path:
    """Locality and the false-fire rates against ``T``, one line per method; saved as PNG.

    Raises:
        ValueError: If the results hold no checkpoint.
    """
    if not results.checkpoints:
        raise ValueError("no checkpoints to plot")
    methods = [m for m in results.checkpoints[-1].methods if m != "no-edit"]
    fig, axes = _figure(1, len(SCALE_METRICS), (4.6 * len(SCALE_METRICS), 3.6))
    for k, (_, title, get) in enumerate(SCALE_METRICS):
        ax = axes[0][k]
        for j, m in enumerate(methods):
            pts = [(cp.t, get(cp.methods[m])) for cp in results.checkpoints if m in cp.methods]
            pts = [(t, v) for t, v in pts if v is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=m, marker=_MARKERS[j % len(_MARKERS)],
                        linestyle=_DASHES[j % len(_DASHES)], alpha=0.85)
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("T (sequential edits in the store)")
        ax.grid(True, alpha=0.3)
    return _save(fig, path, legend_from=axes[0][0])


def plot_gate_latency(results: EvalResults, path: str | os.PathLike[str]) -> Path:
    """Gate latency (p50, p95, ms) against store size (log x axis); saved as PNG.

    Returns:
        The written path.

    Raises:
        ValueError: If no gate latency was measured.
    """
    points = [p for p in results.gate_latency if p.p50_s is not None]
    if not points:
        raise ValueError("no gate latency to plot")
    fig, axes = _figure(1, 1, (6.0, 4.0))
    ax = axes[0][0]
    sizes = [p.store_size for p in points]
    ax.plot(sizes, [1000 * p.p50_s for p in points], marker="o", label="p50")
    p95 = [(p.store_size, 1000 * p.p95_s) for p in points if p.p95_s is not None]
    ax.plot([x for x, _ in p95], [y for _, y in p95], marker="s", label="p95")
    ax.set_xscale("log")
    ax.set_xlabel("store size (edits)")
    ax.set_ylabel("store.gate latency (ms, batch size 1)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_text_rag_dev_curve(results: EvalResults, path: str | os.PathLike[str]) -> Path:
    """text-rag's dev curve: fire rate on positives, quiet rate on negatives and balanced
    accuracy against the cosine threshold, with the chosen threshold marked; saved as PNG.

    Raises:
        ValueError: If the run tuned no text-rag threshold.
    """
    if results.text_rag_tuning is None:
        raise ValueError("no text-rag tuning to plot")
    th = results.text_rag_tuning.threshold
    xs = [p.threshold for p in th.curve]
    fig, axes = _figure(1, 1, (6.5, 4.0))
    ax = axes[0][0]
    ax.plot(xs, [p.tpr for p in th.curve], label="fires on dev prompts/paraphrases (TPR)")
    ax.plot(xs, [p.tnr for p in th.curve], label="quiet on dev locality/general (TNR)", linestyle="--")
    ax.plot(xs, [p.balanced_accuracy for p in th.curve], label="balanced accuracy", linewidth=2.4)
    ax.axvline(th.value, color="k", alpha=0.5, linestyle=":", label=f"chosen {th.value:.3f}")
    ax.set_xlabel("cosine similarity threshold")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_json(results: EvalResults, path: str | os.PathLike[str]) -> Path:
    """Write ``results`` as strict JSON (no NaN), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results.model_dump(mode="json"), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def write_report(results: EvalResults, out_dir: str | os.PathLike[str], *, plots: bool = True) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and (with ``plots``) the PNG plots.

    Args:
        results: The run's results.
        out_dir: Output directory (created).
        plots: Draw the PNG plots.

    Returns:
        ``{"json", "markdown", "metrics_vs_T", "gate_latency"}`` -> written paths (plots
        only when drawn: matplotlib is an optional dependency).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": write_json(results, out / "results.json"),
        "markdown": out / "results.md",
    }
    paths["markdown"].write_text(markdown_report(results))
    if plots and plots_available("the report's PNG plots"):
        paths["metrics_vs_T"] = plot_metrics_vs_t(results, out / "metrics_vs_T.png")
        if len(results.checkpoints) > 1:
            paths["scale"] = plot_scale(results, out / "locality_and_false_fires_vs_T.png")
        if any(p.p50_s is not None for p in results.gate_latency):
            paths["gate_latency"] = plot_gate_latency(results, out / "gate_latency_vs_store_size.png")
        if results.text_rag_tuning is not None:
            paths["text_rag_dev_curve"] = plot_text_rag_dev_curve(results, out / "text_rag_dev_curve.png")
    logger.info("Wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
