"""One measurement's query rows, and the metrics each method gets from them.

The evaluator (:mod:`recipe_chain.evaluation.harness`) gates every row once, plans what each
method gives the LLM, runs the LLM on the unique inputs, then calls :func:`assemble` per
method. Per-example metrics average each example's own mean, so an example with many
paraphrases weighs as much as one with few.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from recipe_chain.data import EditExample, LocalityPrompt
from recipe_chain.evaluation import answers as A
from recipe_chain.evaluation import metrics as M
from recipe_chain.evaluation.config import FIRING_METHODS
from recipe_chain.evaluation.results import AddedTokens, GateStats, MethodMetrics
from recipe_chain.prefix_lm import TargetScore

__all__ = ["SCORED_KINDS", "Row", "Gate", "Plan", "InputCosts", "rows_for", "first_line", "assemble", "general_delta", "diagnostics"]


SCORED_KINDS = ("prompt", "paraphrase", "locality")
"""Row kinds with a scored target."""


@dataclass(frozen=True)
class Row:
    """One query of a measurement: what is asked, about which example, and what is scored."""

    kind: str  # "prompt" | "paraphrase" | "locality" | "general" | "general_answer" | "chat_prompt" | "chat_paraphrase"
    example: int | None  # index into the measured examples
    text: str
    target: str | None  # target_new (prompt/paraphrase), reference answer (locality), None (general)
    old: str | None = None  # the pre-edit answer (prompt/paraphrase), when known
    answers: tuple[str, ...] = ()  # accepted answers of a general question
    chat: bool = False  # the LLM gets the text as the user turn of its chat template
    edited_fact: bool = False  # a locality prompt that asks a fact edited in the store (edited_facts.py)


@dataclass(frozen=True)
class Gate:
    """What the harness keeps of a GateResult (the prompt vectors go to a cache)."""

    hit_id: str | None
    hit_statement: str | None
    top_id: str | None
    top_sim: float | None
    top_statement: str | None
    sentinel_sim: float


@dataclass(frozen=True)
class Plan:
    """What one method gives the LLM for one row."""

    fired: str | None  # edit id the method uses on this row (None: nothing)
    text: str  # LLM input text
    prefix: str | None  # statement of the edit whose prompt vectors are prefixed


def rows_for(examples: Sequence[EditExample], questions: Sequence[LocalityPrompt]) -> list[Row]:
    """Prompt, paraphrase and locality rows of each example, then one row per general question."""
    rows: list[Row] = []
    for i, ex in enumerate(examples):
        rows.append(Row("prompt", i, ex.prompt, ex.target_new, ex.ground_truth))
        rows.extend(Row("paraphrase", i, p, ex.target_new, ex.ground_truth) for p in ex.paraphrases)
        rows.extend(Row("locality", i, loc.prompt, loc.answer) for loc in ex.locality)
    rows.extend(Row("general", None, q.prompt, None, answers=q.accepted_answers) for q in questions)
    return rows


def first_line(text: str) -> str | None:
    """The first line of a generated continuation (a locality reference), or ``None``."""
    line = text.strip().split("\n", 1)[0].strip()
    return line or None


@dataclass(frozen=True)
class InputCosts:
    """How to count what a plan adds to a row's input."""

    llm_tokens: Callable[[str], int]  # LLM tokens of a text
    cl100k_tokens: Callable[[str], int | None]  # cl100k tokens of a text (None: not counted)
    prefix_len: Callable[[str], int]  # prompt vectors of the edit with this statement
    counts_cl100k: bool = True


class _PerExample:
    """Values per measured example; :meth:`mean` averages each example's own mean."""

    def __init__(self, n: int) -> None:
        self.values: list[list[float | bool]] = [[] for _ in range(n)]

    def add(self, example: int | None, value: float | bool) -> None:
        if example is None:
            raise ValueError("a per-example value needs the row's example")
        self.values[example].append(value)

    def mean(self) -> float | None:
        return M.mean_of_means(self.values)


def _example_of(row: Row) -> int:
    if row.example is None:
        raise ValueError(f"a {row.kind} row has no example")
    return row.example


def assemble(
    method: str,
    rows: Sequence[Row],
    plans: dict[str, list[Plan]],
    targets: Sequence[str | None],
    gen_out: dict[tuple[str, str | None], str],
    tf_out: dict[tuple[str, str, str | None], TargetScore],
    edit_ids: Sequence[str],
    costs: InputCosts,
    gen_examples: set[int] | None = None,
    answered: set[int] | frozenset[int] = frozenset(),
) -> MethodMetrics:
    """One method's metrics from the rows of one measurement.

    Args:
        method: The method.
        rows: Every query row (prompts, paraphrases, locality, general, chat ...).
        plans: Per method, per row, what it gave the LLM (``"no-edit"`` is always there).
        targets: Per row, the scored continuation (``None``: not scored).
        gen_out: Greedy outputs by ``(text, prefix statement)``.
        tf_out: Teacher-forced scores by ``(text, target, prefix statement)``.
        edit_ids: The measured examples' edit ids.
        costs: How to count what a plan adds to the input.
        gen_examples: Examples whose outputs were generated (``None``: all).
        answered: Rows of general questions whose answers are scored.
    """
    n_ex = len(edit_ids)
    ans_p = _PerExample(n_ex)
    ans_g = _PerExample(n_ex)
    kept_out = _PerExample(n_ex)
    general_ok: list[bool] = []
    rel = _PerExample(n_ex)
    gen = _PerExample(n_ex)
    loc = _PerExample(n_ex)
    loc_all = _PerExample(n_ex)
    em_p = _PerExample(n_ex)
    em_g = _PerExample(n_ex)
    unchanged = _PerExample(n_ex)
    fired: dict[str, list[bool]] = {"prompt": [], "paraphrase": [], "locality": [], "general": [],
                                    "general_answer": [], "edited_fact": [], "chat_prompt": [],
                                    "chat_paraphrase": []}
    chat_ok = {k: _PerExample(n_ex) for k in ("chat_prompt", "chat_paraphrase")}
    correct: dict[str, list[bool]] = {"prompt": [], "paraphrase": []}
    rel_ok: list[float] = []
    gen_ok: list[float] = []
    loc_fire: list[float] = []
    loc_quiet: list[float] = []
    added_text: list[int] = []
    added_cl: list[int] = []
    added_virtual: list[int] = []
    added_any: list[bool] = []
    mine = plans[method]
    base = plans["no-edit"]
    for i, r in enumerate(rows):
        plan = mine[i]
        fired["edited_fact" if r.edited_fact else r.kind].append(plan.fired is not None)
        if r.kind == "general_answer":
            if i in answered:
                general_ok.append(A.contains_answer(gen_out[(plan.text, plan.prefix)], r.answers))
            continue
        if r.kind == "general":
            continue
        if r.kind in chat_ok:
            output = gen_out[(plan.text, plan.prefix)]
            chat_ok[r.kind].add(r.example, A.answer_correct(output, r.target or "", old_target=r.old))
            continue
        own = edit_ids[_example_of(r)]
        is_own = plan.fired == own
        # added input
        extra_text = costs.llm_tokens(plan.text) - costs.llm_tokens(r.text)
        added_text.append(extra_text)
        cl_plan, cl_row = costs.cl100k_tokens(plan.text), costs.cl100k_tokens(r.text)
        if cl_plan is not None and cl_row is not None:
            added_cl.append(cl_plan - cl_row)
        added_virtual.append(costs.prefix_len(plan.prefix) if plan.prefix is not None else 0)
        added_any.append(extra_text > 0 or plan.prefix is not None)
        with_output = gen_examples is None or r.example in gen_examples
        output = gen_out[(plan.text, plan.prefix)] if with_output else ""
        target = targets[i]
        if r.kind in ("prompt", "paraphrase"):
            assert target is not None
            acc = tf_out[(plan.text, target, plan.prefix)].token_accuracy
            correct[r.kind].append(is_own)
            token_acc, em, ans, given_hit = (rel, em_p, ans_p, rel_ok) if r.kind == "prompt" else (gen, em_g, ans_g, gen_ok)
            token_acc.add(r.example, acc)
            if with_output:
                em.add(r.example, M.exact_match(output, target))
                ans.add(r.example, A.answer_correct(output, target, old_target=r.old))
            if is_own:
                given_hit.append(acc)
        elif r.edited_fact:  # firing is right here: only the all-prompts Locality counts it
            if target is not None:
                edited = tf_out[(plan.text, target, plan.prefix)].argmax_ids
                reference = tf_out[(base[i].text, target, base[i].prefix)].argmax_ids
                loc_all.add(r.example, M.kept_token_share(edited, reference))
        else:  # locality
            if with_output:
                base_output = gen_out[(base[i].text, base[i].prefix)]
                unchanged.add(r.example, M.output_unchanged(output, base_output))
                kept_out.add(r.example, A.locality_kept(output, base_output))
            if target is not None:
                edited = tf_out[(plan.text, target, plan.prefix)].argmax_ids
                reference = tf_out[(base[i].text, target, base[i].prefix)].argmax_ids
                kept = M.kept_token_share(edited, reference)
                loc.add(r.example, kept)
                loc_all.add(r.example, kept)
                (loc_fire if plan.fired is not None else loc_quiet).append(kept)
    oracle_general = method == "text-rag-oracle"
    return MethodMetrics(
        reliability=rel.mean(),
        generality=gen.mean(),
        locality=loc.mean(),
        locality_all_prompts=loc_all.mean(),
        em_prompt=em_p.mean(),
        em_paraphrase=em_g.mean(),
        locality_unchanged=unchanged.mean(),
        answer_accuracy=ans_p.mean(),
        answer_accuracy_paraphrase=ans_g.mean(),
        locality_kept=kept_out.mean(),
        general_answer_accuracy=M.rate(general_ok),
        chat_answer_accuracy=chat_ok["chat_prompt"].mean(),
        chat_answer_accuracy_paraphrase=chat_ok["chat_paraphrase"].mean(),
        gate=GateStats(
            hit_rate=M.rate(fired["prompt"]),
            correct_hit_prompt=M.rate(correct["prompt"]),
            correct_hit_paraphrase=M.rate(correct["paraphrase"]),
            false_fire_locality=M.rate(fired["locality"]),
            false_fire_general=None if oracle_general else M.rate(fired["general"]),
            fire_on_edited_fact=M.rate(fired["edited_fact"]),
        ),
        added_tokens=AddedTokens(
            llm_text=M.mean(added_text),
            cl100k=M.mean(added_cl) if costs.counts_cl100k else None,
            virtual=M.mean(added_virtual),
            llm_total=M.mean(a + v for a, v in zip(added_text, added_virtual)),
            fired_share=M.rate(added_any),
        ),
        conditional=(
            {
                "reliability_given_correct_hit": M.mean(rel_ok),
                "generality_given_correct_hit": M.mean(gen_ok),
                "locality_given_fire": M.mean(loc_fire),
                "locality_given_no_fire": M.mean(loc_quiet),
            }
            if method in FIRING_METHODS
            else {}
        ),
    )


def general_delta(
    method: str,
    rows: Sequence[Row],
    plans: dict[str, list[Plan]],
    gen_out: dict[tuple[str, str | None], str],
    answered: Sequence[int],
) -> dict[str, float | None]:
    """Paired change of general answer accuracy against the unedited model, with a 95 % interval."""
    diffs = []
    for i in answered:
        mine, base = plans[method][i], plans["no-edit"][i]
        ok = A.contains_answer(gen_out[(mine.text, mine.prefix)], rows[i].answers)
        ok_base = A.contains_answer(gen_out[(base.text, base.prefix)], rows[i].answers)
        diffs.append(int(ok) - int(ok_base))
    n = len(diffs)
    if n == 0:
        return {"general_answer_delta": None, "general_answer_delta_ci95": None}
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    return {"general_answer_delta": mean, "general_answer_delta_ci95": 1.96 * (var / n) ** 0.5}


def diagnostics(
    rows: Sequence[Row], gates: dict[str, Gate], edit_ids: Sequence[str]
) -> dict[str, float | None]:
    """Store-level figures that attribute errors to retrieval or to the gate."""
    top_ok: dict[str, list[bool]] = {"prompt": [], "paraphrase": []}
    admit_given_ok: dict[str, list[bool]] = {"prompt": [], "paraphrase": []}
    right_admitted: dict[str, list[bool]] = {"prompt": [], "paraphrase": []}
    margins: dict[str, list[float]] = {"prompt": [], "paraphrase": [], "locality": [], "general": []}
    for r in rows:
        if r.kind not in margins or r.edited_fact:
            continue
        g = gates[r.text]
        if g.top_sim is not None:
            margins[r.kind].append(g.top_sim - g.sentinel_sim)
        if r.kind in top_ok:
            own = edit_ids[_example_of(r)]
            ok = g.top_id == own
            top_ok[r.kind].append(ok)
            right_admitted[r.kind].append(g.hit_id == own)
            if ok:
                admit_given_ok[r.kind].append(g.hit_id is not None)
    out: dict[str, float | None] = {
        "retrieval_top1_prompt": M.rate(top_ok["prompt"]),
        "retrieval_top1_paraphrase": M.rate(top_ok["paraphrase"]),
        "gate_admits_correct_top1_prompt": M.rate(admit_given_ok["prompt"]),
        "gate_admits_correct_top1_paraphrase": M.rate(admit_given_ok["paraphrase"]),
        # with a gate verifier the admitted edit need not be the top-1
        "right_edit_admitted_prompt": M.rate(right_admitted["prompt"]),
        "right_edit_admitted_paraphrase": M.rate(right_admitted["paraphrase"]),
    }
    for kind, values in margins.items():
        out[f"top1_minus_sentinel_median_{kind}"] = M.percentile(values, 0.5)
    return out
