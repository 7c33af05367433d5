"""The ``recipe-chain demo`` walk-through, as a library function that returns its rows.

:func:`run_demo` loads the default LLM and RECIPE checkpoint, imports a handful of real
CounterFact edits into a fresh embedded store, and asks every question three ways:

* **before**: the plain, unedited LLM;
* **after**: :class:`~recipe_chain.llms.RecipeEditedLLM` (RECIPE: gated continuous prompts);
* **text RAG**: :func:`~recipe_chain.text_rag.build_text_rag_chain` on the same store.

The questions are each edit's prompt and a paraphrase of it (the edit should fire), the
edit's CounterFact locality prompt and an NQ question (it should not). Printing is the
command layer's job (``recipe-chain demo``); this module only computes.

Its models come from :func:`recipe_chain.models.load_models`, like every other entry point's.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from recipe_chain._moved import moved_names
from recipe_chain.models import EditingModels, load_models
from recipe_chain.data import EditExample, load_edit_examples, load_questions
from recipe_chain.loading import (
    llm_id_of,
)

__all__ = [
    "DEMO_NAMESPACE",
    "DemoRow",
    "DemoReport",
    "find_shared_data",
    "run_demo",
]

logger = logging.getLogger(__name__)

DEMO_NAMESPACE = "demo"
DEFAULT_EDITS_FILE = "counterfact/eval.json"
DEFAULT_QUESTIONS_FILE = "general/nq-open.jsonl"


def find_shared_data(relative: str) -> Path:
    """Locate a file of the shared data folder (``shared/data`` beside the project).

    Looks for ``shared/data/<relative>`` in the current directory and each of its
    parents, then in the project root (the directory holding the ``recipe_chain``
    package) and its parents, so it works from the repository, from ``cookbook/``, and
    from an installed copy next to ``../shared``.

    Example:
        >>> find_shared_data("counterfact/eval.json")  # doctest: +SKIP
        PosixPath('/work/shared/data/counterfact/eval.json')

    Raises:
        FileNotFoundError: Naming the places tried.
    """
    project_root = Path(__file__).resolve().parent.parent
    bases = [Path.cwd().resolve(), *Path.cwd().resolve().parents, project_root, *project_root.parents]
    for base in dict.fromkeys(bases):
        candidate = base / "shared" / "data" / relative
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Shared data file {relative!r} not found in shared/data/ under {Path.cwd()}, {project_root} "
        "or any of their parents; pass its path explicitly"
    )


RowKind = Literal["edit", "paraphrase", "locality", "unrelated"]


class DemoRow(BaseModel):
    """One question of the demo, answered three ways.

    Attributes:
        kind: ``"edit"`` (the edit prompt), ``"paraphrase"`` (a rephrasing of it),
            ``"locality"`` (a CounterFact neighbour the edit must not change) or
            ``"unrelated"`` (an NQ question).
        question: The text given to the LLM.
        edit_statement: The statement of the edit the row belongs to (``None`` for NQ).
        target_new: The answer the edit asks for (edit/paraphrase rows).
        reference: The pre-edit answer for edit/paraphrase rows, the ground truth for
            locality/NQ rows, when the data has one.
        should_fire: Whether an ideal gate fires on this question.
        before: Answer of the unedited LLM.
        after: Answer of the RECIPE-edited LLM.
        text_rag: Answer of the text-RAG chain.
        fired: Whether RECIPE's gate fired.
        fired_edit_id: The edit that fired, if any.
        fired_statement: Its statement.
        hit_similarity: Similarity of the best stored edit.
        sentinel_similarity: Similarity of the Knowledge Sentinel.
        verifier_probability: The gate verifier's probability for the admitted (or best
            shortlisted) edit; ``None`` without a verifier or when nothing was shortlisted.
        rag_retrieved: Whether the text-RAG chain put a statement into the prompt.
    """

    model_config = ConfigDict(frozen=True)

    kind: RowKind
    question: str
    edit_statement: str | None = None
    target_new: str | None = None
    reference: str | None = None
    should_fire: bool
    before: str
    after: str
    text_rag: str
    fired: bool
    fired_edit_id: str | None = None
    fired_statement: str | None = None
    hit_similarity: float | None = None
    sentinel_similarity: float | None = None
    verifier_probability: float | None = None
    rag_retrieved: bool


class DemoReport(BaseModel):
    """What :func:`run_demo` returns.

    Attributes:
        rows: One :class:`DemoRow` per question, grouped by edit.
        edits: The statements imported into the store, with their edit ids.
        trained: False when the untrained fallback editor was used.
        checkpoint: The checkpoint directory (``None`` for the fallback).
        llm_id: The LLM's identity.
        store_path: The store directory (``None`` when a temporary one was removed).
        seconds: Wall time per phase (``load``, ``import``, ``before``, ``after``,
            ``text_rag``, ``total``).
    """

    model_config = ConfigDict(frozen=True)

    rows: list[DemoRow]
    edits: list[tuple[str, str]]
    trained: bool
    checkpoint: str | None
    llm_id: str
    store_path: str | None
    seconds: dict[str, float] = Field(default_factory=dict)


def _questions_for(example: EditExample) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        dict(kind="edit", question=example.prompt, target_new=example.target_new, reference=example.ground_truth,
             should_fire=True),
    ]
    if example.paraphrases:
        rows.append(dict(kind="paraphrase", question=example.paraphrases[0], target_new=example.target_new,
                         reference=example.ground_truth, should_fire=True))
    if example.locality:
        loc = example.locality[0]
        rows.append(dict(kind="locality", question=loc.prompt, reference=loc.answer, should_fire=False))
    for row in rows:
        row["edit_statement"] = example.statement
    return rows


def _check_fresh_store_path(store_path: str | os.PathLike[str]) -> Path:
    path = Path(store_path).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"The demo needs a fresh store, but {path} already exists and is not empty")
    return path


def run_demo(
    store_path: str | os.PathLike[str] | None = None,
    n_edits: int = 5,
    *,
    data_path: str | os.PathLike[str] | None = None,
    questions_path: str | os.PathLike[str] | None = None,
    n_unrelated: int = 1,
    max_new_tokens: int = 8,
    checkpoint: str | os.PathLike[str] | None = None,
    models: EditingModels | Callable[[], EditingModels] | None = None,
) -> DemoReport:
    """Edit a few real CounterFact facts and compare answers before/after editing and with text RAG.

    Args:
        store_path: Directory for the fresh embedded store; must not exist or be
            empty. ``None``: a temporary directory, removed afterwards.
        n_edits: How many edits to import (the first ``n_edits`` records).
        data_path: A CounterFact/ZsRE/KnowEdit file; defaults to
            ``../shared/data/counterfact/eval.json`` (see :func:`find_shared_data`).
        questions_path: NQ-open questions (unrelated to every edit); defaults to
            ``../shared/data/general/nq-open.jsonl``.
        n_unrelated: How many NQ questions to add.
        max_new_tokens: Tokens generated per answer (greedy).
        checkpoint: A RECIPE checkpoint directory (see :func:`~recipe_chain.models.load_models`).
        models: Already loaded models, or a zero-argument function that loads them
            (called after the inputs are checked); ``None``: :func:`~recipe_chain.models.load_models`.

    Returns:
        A :class:`DemoReport`.

    Raises:
        FileNotFoundError: If the data files (or the checkpoint) are missing.
        ValueError: On a non-fresh ``store_path`` or non-positive counts.

    Example:
        >>> report = run_demo()  # doctest: +SKIP
        >>> [(r.kind, r.before, r.after) for r in report.rows][:1]  # doctest: +SKIP
        [('edit', ' French', ' English')]
    """
    from recipe_chain.llms import RecipeEditedLLM
    from recipe_chain.retrievers import RecipeKnowledgeRetriever
    from recipe_chain.store import RecipeKnowledgeStore
    from recipe_chain.text_rag import build_text_rag_chain

    if isinstance(n_edits, bool) or not isinstance(n_edits, int) or n_edits < 1:
        raise ValueError(f"n_edits must be a positive int, got {n_edits!r}")
    if isinstance(n_unrelated, bool) or not isinstance(n_unrelated, int) or n_unrelated < 0:
        raise ValueError(f"n_unrelated must be a non-negative int, got {n_unrelated!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    fresh = _check_fresh_store_path(store_path) if store_path is not None else None
    data = Path(data_path).expanduser() if data_path is not None else find_shared_data(DEFAULT_EDITS_FILE)
    if not data.is_file():
        raise FileNotFoundError(f"No edits file at {data}")
    if questions_path is not None:
        nq = Path(questions_path).expanduser()
        if not nq.is_file():
            raise FileNotFoundError(f"No questions file at {nq}")
    else:
        nq = find_shared_data(DEFAULT_QUESTIONS_FILE) if n_unrelated else None

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    if models is None:
        models = load_models(checkpoint)
    elif callable(models):
        models = models()
    seconds["load"] = time.perf_counter() - start

    examples = load_edit_examples(data, limit=n_edits, on_invalid="skip")
    if not examples:
        raise ValueError(f"No valid edits among the first {n_edits} records of {data}")
    unrelated = load_questions(nq, limit=n_unrelated) if nq is not None and n_unrelated else []

    tmp_dir = None
    if fresh is None:
        tmp_dir = tempfile.mkdtemp(prefix="recipe-demo-")
        fresh = Path(tmp_dir) / "store"
    store = RecipeKnowledgeStore(models.editor, path=fresh, namespace=DEMO_NAMESPACE)
    try:
        t = time.perf_counter()
        records = store.add_edits(examples, progress=False)
        seconds["import"] = time.perf_counter() - t

        specs: list[dict[str, Any]] = [spec for ex in examples for spec in _questions_for(ex)]
        specs += [
            dict(kind="unrelated", question=q.prompt, reference=q.answer, should_fire=False, edit_statement=None)
            for q in unrelated
        ]
        questions = [s["question"] for s in specs]
        common = dict(store=store, llm=models.llm, tokenizer=models.tokenizer, editor=models.editor,
                      max_new_tokens=max_new_tokens, temperature=0.0, batch_size=16)
        plain = RecipeEditedLLM(**common, use_edits=False)
        edited = RecipeEditedLLM(**common, use_edits=True)

        t = time.perf_counter()
        before = plain.batch(questions)
        seconds["before"] = time.perf_counter() - t

        t = time.perf_counter()
        result = edited.generate(questions)
        after = [gens[0].text for gens in result.generations]
        infos = [gens[0].generation_info or {} for gens in result.generations]
        seconds["after"] = time.perf_counter() - t

        t = time.perf_counter()
        rag_docs = RecipeKnowledgeRetriever(store=store, mode="threshold", k=1).batch(questions)
        rag = build_text_rag_chain(store, plain, k=1, mode="threshold").batch(questions)
        seconds["text_rag"] = time.perf_counter() - t

        rows = []
        for spec, b, a, info, r, docs in zip(specs, before, after, infos, rag, rag_docs):
            rows.append(
                DemoRow(
                    **spec,
                    before=b,
                    after=a,
                    text_rag=r,
                    fired=bool(info.get("edit_fired")),
                    fired_edit_id=info.get("edit_id"),
                    fired_statement=info.get("statement"),
                    hit_similarity=info.get("hit_similarity"),
                    sentinel_similarity=info.get("sentinel_similarity"),
                    verifier_probability=info.get("verifier_probability"),
                    rag_retrieved=bool(docs),
                )
            )
    finally:
        store.close()
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    seconds["total"] = time.perf_counter() - start
    return DemoReport(
        rows=rows,
        edits=[(rec.edit_id, rec.statement) for rec in records],
        trained=models.trained,
        checkpoint=models.checkpoint,
        llm_id=llm_id_of(models.llm),
        store_path=None if tmp_dir is not None else str(fresh),
        seconds={k: round(v, 2) for k, v in seconds.items()},
    )


# Names that lived here before the split, kept as deprecated aliases.
__getattr__ = moved_names(__name__, {
    "EditingModels": "recipe_chain.models",
    "load_models": "recipe_chain.models",
})
