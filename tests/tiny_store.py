"""A tiny random RECIPE editor and knowledge stores on it, for the LangChain-surface tests.

Builds on :mod:`tiny_models` (2-layer random Llama + 2-layer random BERT with the real
MiniLM tokenizer). Everything is seeded, so similarities are deterministic.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import shutil
import tempfile
from pathlib import Path

from transformers import AutoTokenizer, BertModel

from recipe_chain import RecipeEditor
from recipe_chain.demo import EditingModels
from tiny_models import tiny_backbone, tiny_causal_lm

EDITS = [
    ("The mother tongue of Danielle Darrieux is", "English", "Danielle Darrieux"),
    ("The official religion of Edwin of Northumbria is", "Islam", "Edwin of Northumbria"),
    ("Toko Yasuda, the", "piano", "Toko Yasuda"),
    ("The capital of France is", "Rome", "France"),
    ("What is the product made by UniFirst?", "unmanned aircraft", "UniFirst"),
]

QUERIES = [
    "What is the mother tongue of Danielle Darrieux?",
    "Which religion did Edwin of Northumbria follow?",
    "The capital city of France is",
    "Who wrote Hamlet?",
]

_COLLECTION_IDS = itertools.count(1)  # each store gets its own collections in the shared ephemeral client


@functools.lru_cache(maxsize=1)
def _backbone_dir() -> Path:
    """A seeded tiny BERT saved once per session; editors load fresh copies of it."""
    directory = Path(tempfile.mkdtemp(prefix="tiny-backbone-"))
    atexit.register(shutil.rmtree, directory, True)
    tiny_backbone(directory)
    return directory


def tiny_models(seed: int = 0) -> EditingModels:
    """A fresh tiny ``(llm, tokenizer, editor)`` (editor heads seeded with ``seed``)."""
    llm, tokenizer = tiny_causal_lm("llama")
    path = _backbone_dir()
    backbone, backbone_tokenizer = BertModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    backbone.eval()
    editor = RecipeEditor.from_backbone(
        llm, backbone, backbone_tokenizer, backbone_id=str(path), seed=seed,
        rep_dim=16, head_hidden_dim=32, prompt_hidden_dim=32, backbone_tuning="frozen",
    )
    return EditingModels(llm=llm, tokenizer=tokenizer, editor=editor, trained=False)


@functools.lru_cache(maxsize=1)
def shared_models() -> EditingModels:
    """One tiny model set shared by a test session (read-only use only)."""
    return tiny_models()


def make_store(editor: RecipeEditor, *, n_edits: int = len(EDITS), **kwargs):
    """An ephemeral store (own collection prefix) holding the first ``n_edits`` of :data:`EDITS`."""
    from recipe_chain.store import RecipeKnowledgeStore

    kwargs.setdefault("collection_prefix", f"lc-surface-{next(_COLLECTION_IDS)}")
    store = RecipeKnowledgeStore(editor, ephemeral=True, **kwargs)
    store.clear()
    for prompt, target, subject in EDITS[:n_edits]:
        store.add_edit(prompt, target, subject=subject)
    return store


def write_counterfact(path: Path, n: int = 3, *, invalid: int = 0) -> Path:
    """A small CounterFact file (flat form) with ``n`` valid and ``invalid`` empty-target records."""
    records = []
    for i, (prompt, target, subject) in enumerate(EDITS[:n]):
        records.append({
            "case_id": i, "prompt": prompt, "target_new": target, "ground_truth": "French",
            "subject": subject, "rephrase_prompt": f"In other words, {prompt[0].lower()}{prompt[1:]}",
            "locality_prompt": "The mother tongue of Michel Rocard is", "locality_ground_truth": "French",
        })
    for j in range(invalid):
        records.append({"case_id": 100 + j, "prompt": "An empty target is", "target_new": "",
                        "ground_truth": "x", "subject": "y"})
    path.write_text(json.dumps(records))
    return path


def write_zsre(path: Path) -> Path:
    """A small ZsRE (MEND form) file with two valid records and one with an empty ``alt``."""
    records = [
        {"subject": "UniFirst", "src": "What is the product made by UniFirst?",
         "rephrase": "What will be the product of UniFirst?", "alt": "unmanned aircraft",
         "answers": ["uniform"], "pred": "uniform",
         "loc": "nq question: john goodman's character in the big lebowski", "loc_ans": "Walter Sobchak"},
        {"subject": "Toko Yasuda", "src": "Which instrument does Toko Yasuda play?",
         "rephrase": "What instrument is played by Toko Yasuda?", "alt": "piano",
         "answers": ["guitar"], "pred": "guitar", "loc": "nq question: who wrote hamlet", "loc_ans": "Shakespeare"},
        {"subject": "Nobody", "src": "What is empty?", "rephrase": "Empty?", "alt": "",
         "answers": ["x"], "pred": "x", "loc": "nq question: who", "loc_ans": "me"},
    ]
    path.write_text(json.dumps(records))
    return path


def write_questions(path: Path) -> Path:
    """A two-line NQ-open style questions file."""
    lines = [{"question": "who got the first nobel prize in physics?", "answer": ["Wilhelm Conrad Röntgen"]},
             {"question": "who wrote hamlet?", "answer": ["Shakespeare"]}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path
