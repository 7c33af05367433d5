"""The ``recipe-chain`` store commands and the demo, run in-process on tiny random models.

The CLI gets its models from ``store_commands.load_models``; the ``cli`` fixture
replaces it with tiny ones, so each command really runs (store, gate, generation)
in a fraction of a second. ``integration`` tests use the real default models.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recipe_chain import cli
from recipe_chain.commands import store_commands
from recipe_chain.demo import DemoReport, run_demo
from recipe_chain.models import EditingModels, load_models
from tiny_models import tiny_causal_lm
from tiny_store import EDITS, shared_models, tiny_models, write_counterfact, write_questions, write_zsre

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def models(monkeypatch) -> EditingModels:
    m = shared_models()
    monkeypatch.setattr(store_commands, "load_models", lambda checkpoint=None, **kw: m)
    return m


@pytest.fixture
def run(models, capsys, tmp_path):
    """``run(*argv)`` -> (exit code, stdout, stderr) of ``recipe-chain --store <tmp> *argv``."""
    store = tmp_path / "store"

    def _run(*argv: str, store_path: Path | None = store) -> tuple[int, str, str]:
        prefix = ["--store", str(store_path)] if store_path is not None else []
        code = cli.main([*prefix, *argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return code, out, err

    return _run


def open_store(path: Path, models: EditingModels, namespace: str = "default"):
    from recipe_chain.store import RecipeKnowledgeStore

    return RecipeKnowledgeStore(models.editor, path=path, namespace=namespace)


# ------------------------------------------------------------------------- help and parsing
def test_help_lists_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("edit", "ask", "list", "delete", "import", "demo"):
        assert re.search(rf"\b{command}\b", out), command
    for option in ("--store", "--server", "--namespace", "--checkpoint"):
        assert option in out
    for command in ("edit", "ask", "list", "delete", "import", "demo"):
        with pytest.raises(SystemExit) as exc:
            cli.main([command, "--help"])
        assert exc.value.code == 0
    assert "TARGET" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["edit", "only a prompt"],
        ["ask"],
        ["delete"],
        ["list", "--limit", "0"],
        ["list", "--limit", "many"],
        ["import", "x.json", "--format", "csv"],
        ["ask", "q", "--max-new-tokens", "-1"],
        ["frobnicate"],
    ],
)
def test_argument_errors_exit_2(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_no_command_prints_help_and_fails(capsys) -> None:
    assert cli.main([]) == 2
    assert "usage:" in capsys.readouterr().out


# ------------------------------------------------------------------------- commands
def test_edit_list_ask_delete_roundtrip(run, models, tmp_path) -> None:
    code, out, _ = run("edit", EDITS[0][0], EDITS[0][1], "--subject", EDITS[0][2], "--id", "darrieux")
    assert code == 0
    assert out.strip() == f"Added edit darrieux: {EDITS[0][0]} {EDITS[0][1]}"
    code, out, _ = run("edit", EDITS[3][0], EDITS[3][1])
    assert code == 0
    generated_id = re.match(r"Added edit (\S+):", out).group(1)

    code, out, _ = run("list")
    assert code == 0
    assert "darrieux" in out and generated_id in out and f"{EDITS[3][0]} {EDITS[3][1]}" in out
    assert "2 of 2 active edits" in out
    code, out, _ = run("list", "--limit", "1")
    assert "1 of 2 active edits" in out

    question = "What is the mother tongue of Danielle Darrieux?"
    code, out, _ = run("ask", question, "--max-new-tokens", "4")
    assert code == 0
    answer, report = out.split("\n--\n")
    store = open_store(tmp_path / "store", models)
    gate = store.gate(question)
    store.close()
    if gate.hit is not None:
        assert report.startswith(f"edit fired: {gate.hit.edit_id}  \"{gate.hit.statement}\"")
        assert f"similarity {gate.hit_similarity:.3f} > sentinel {gate.sentinel_similarity:.3f}" in report
    else:
        assert report.startswith(
            f"no edit fired: best similarity {gate.hit_similarity:.3f} <= sentinel {gate.sentinel_similarity:.3f}"
        )

    code, out, _ = run("delete", "darrieux")
    assert code == 0 and out.strip() == f"Deleted edit darrieux: {EDITS[0][0]} {EDITS[0][1]}"
    code, out, _ = run("list")
    assert "darrieux" not in out and "1 of 1 active edits" in out


def test_ask_reports_the_fired_edit(run, models, tmp_path) -> None:
    # Find an edit prompt the tiny random gate admits, to check the "fired" report exactly.
    store = open_store(tmp_path / "store", models)
    for prompt, target, subject in EDITS:
        store.add_edit(prompt, target, subject=subject)
    fired = [(p, store.gate(p)) for p, _, _ in EDITS]
    store.close()
    prompt, gate = next((p, g) for p, g in fired if g.hit is not None)
    code, out, _ = run("ask", prompt, "--max-new-tokens", "3")
    assert code == 0
    assert f"edit fired: {gate.hit.edit_id}  \"{gate.hit.statement}\"" in out


def test_ask_on_an_empty_store(run) -> None:
    code, out, _ = run("ask", "Who wrote Hamlet?", "--max-new-tokens", "2")
    assert code == 0 and out.rstrip().endswith("no edit fired: the store has no edits in this namespace")


def test_namespaces_are_separate(run) -> None:
    assert run("--namespace", "a", "edit", "The capital of Italy is", "Paris")[0] == 0
    assert "No active edits" in run("--namespace", "b", "list")[1]
    assert "1 of 1 active edits" in run("--namespace", "a", "list")[1]


def test_import_counterfact_with_invalid_records(run, tmp_path) -> None:
    data = write_counterfact(tmp_path / "cf.json", n=3, invalid=2)
    code, out, err = run("import", str(data))
    assert code == 0
    assert "Imported 3 edits (counterfact_flat)" in out
    assert "skipped 2 invalid record(s) of 5" in out
    assert "3 of 3 active edits" in run("list")[1]


def test_import_zsre_and_limit(run, tmp_path) -> None:
    data = write_zsre(tmp_path / "zsre.json")
    code, out, _ = run("import", str(data), "--limit", "1", "--format", "zsre_mend")
    assert code == 0 and "Imported 1 edits (zsre_mend)" in out and "skipped" not in out
    code, out, _ = run("import", str(data))
    assert code == 0 and "Imported 2 edits (zsre_mend)" in out and "skipped 1 invalid record(s) of 3" in out
    listing = run("list", "--all")[1]
    assert "What is the product made by UniFirst? unmanned aircraft" in listing


def test_import_shows_a_progress_bar(run, tmp_path) -> None:
    data = write_counterfact(tmp_path / "cf.json", n=2)
    _, _, err = run("import", str(data))
    assert "2/2" in err  # tqdm writes to stderr


# ------------------------------------------------------------------------- bad input
def test_bad_input_exit_codes(run, tmp_path) -> None:
    cases = {
        "missing file": (["import", str(tmp_path / "nope.json")], "nope.json"),
        "unknown id": (["delete", "no-such-edit"], "no-such-edit"),
        "empty prompt": (["edit", "  ", "English"], "PROMPT must not be empty"),
        "empty target": (["edit", "The capital of Italy is", ""], "TARGET must not be empty"),
        "empty question": (["ask", ""], "QUESTION must not be empty"),
    }
    for name, (argv, message) in cases.items():
        code, out, err = run(*argv)
        assert code == 2, name
        assert err.startswith("error: ") and message in err, (name, err)
        assert err.count("\n") <= 2, (name, err)
    code, _, err = run("demo", "--data", str(tmp_path / "missing.json"), store_path=None)
    assert code == 2 and err.startswith("error: ") and "missing.json" in err


def test_bad_data_file_and_server_options(run, tmp_path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    code, _, err = run("import", str(broken))
    assert code == 2 and "broken.json" in err
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"question": "q?", "answer": ["a"]}]))
    assert run("import", str(wrong))[0] == 2
    code, _, err = run("--server", "http://127.0.0.1:1", "list")  # --store is given too
    assert code == 2 and "not both" in err
    code, _, err = run("--server", "ftp://example.org", "list", store_path=None)
    assert code == 2 and "http" in err


def test_demo_refuses_a_non_empty_store(run, tmp_path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    code, _, err = run("demo", store_path=busy)
    assert code == 2 and "fresh store" in err


# ------------------------------------------------------------------------- demo
def test_demo_command_prints_the_side_by_side_table(run, tmp_path) -> None:
    data = write_counterfact(tmp_path / "cf.json", n=2)
    questions = write_questions(tmp_path / "nq.jsonl")
    code, out, _ = run("demo", "--data", str(data), "--questions", str(questions), "--n-edits", "2",
                       "--max-new-tokens", "3", store_path=None)
    assert code == 0
    for header in ("KIND", "QUESTION", "BEFORE (plain)", "FIRED hit>KS / P", "AFTER (RECIPE)", "CTX", "TEXT RAG"):
        assert header in out
    body = out.split("Edits imported:")[1]
    assert len(re.findall(r"^(edit|paraphrase|locality|unrelated) ", body, flags=re.M)) == 2 * 3 + 1
    assert "UNTRAINED" in out and "Demo wall time:" in out


def test_run_demo_rows_are_consistent(models, tmp_path) -> None:
    data = write_counterfact(tmp_path / "cf.json", n=3)
    questions = write_questions(tmp_path / "nq.jsonl")
    store_path = tmp_path / "demo-store"
    report = run_demo(store_path, 3, data_path=data, questions_path=questions, n_unrelated=2, max_new_tokens=4,
                      models=models)
    assert isinstance(report, DemoReport) and report.store_path == str(store_path)
    assert [r.kind for r in report.rows] == ["edit", "paraphrase", "locality"] * 3 + ["unrelated"] * 2
    assert [s for _, s in report.edits] == [f"{p} {t}" for p, t, _ in EDITS[:3]]
    assert set(report.seconds) >= {"load", "import", "before", "after", "text_rag", "total"}
    store = open_store(store_path, models, namespace="demo")
    for row in report.rows:
        gate = store.gate(row.question)
        assert row.fired == (gate.hit is not None)
        assert row.fired_edit_id == (gate.hit.edit_id if gate.hit else None)
        assert row.sentinel_similarity == pytest.approx(gate.sentinel_similarity, abs=1e-5)
        assert row.should_fire == (row.kind in ("edit", "paraphrase"))
        # untouched paths give exactly the unedited answer (greedy decoding)
        if not row.fired:
            assert row.after == row.before
        if not row.rag_retrieved:
            assert row.text_rag == row.before
        # the text-RAG gate (threshold mode, KS threshold, k=1) agrees with RECIPE's
        assert row.rag_retrieved == row.fired
    store.close()


def test_run_demo_validates_arguments(models, tmp_path) -> None:
    data = write_counterfact(tmp_path / "cf.json", n=1)
    with pytest.raises(ValueError):
        run_demo(n_edits=0, data_path=data, models=models)
    with pytest.raises(FileNotFoundError):
        run_demo(data_path=data, questions_path=tmp_path / "none.jsonl", models=models)

    def never():  # inputs are checked before any model is loaded
        raise AssertionError("models loaded before the inputs were checked")

    with pytest.raises(FileNotFoundError):
        run_demo(data_path=tmp_path / "none.json", models=never)


# ------------------------------------------------------------------------- model loading
def test_load_models_falls_back_only_when_allowed(monkeypatch, caplog, tmp_path) -> None:
    from recipe_chain import models as models_module

    tiny = shared_models()
    loads = []
    monkeypatch.setattr(models_module, "load_default_llm", lambda: loads.append(1) or (tiny.llm, tiny.tokenizer))
    monkeypatch.setattr(models_module, "default_checkpoint_path", lambda: tmp_path / "not-shipped")
    calls = []

    class FakeEditorClass:
        @staticmethod
        def from_backbone(llm, seed=0):
            calls.append(llm)
            return tiny.editor

    monkeypatch.setattr(models_module, "RecipeEditor", FakeEditorClass)
    with pytest.raises(FileNotFoundError, match="No shipped RECIPE checkpoint.*--allow-untrained"):
        load_models()
    assert loads == []  # it fails before loading any model
    with caplog.at_level(logging.WARNING, logger="recipe_chain.models"):
        loaded = load_models(allow_untrained=True)
    assert loaded.trained is False and loaded.editor is tiny.editor and calls == [tiny.llm]
    assert "UNTRAINED" in caplog.text
    # the CLI asks for it with one global flag, which reaches the loader
    seen = []
    monkeypatch.setattr(store_commands, "load_models",
                        lambda checkpoint=None, allow_untrained=False: seen.append(allow_untrained) or tiny)
    assert cli.main(["--store", str(tmp_path / "s"), "--allow-untrained", "list"]) == 0
    assert cli.main(["--store", str(tmp_path / "s"), "list"]) == 0
    assert seen == [True, False]


def test_load_models_from_a_checkpoint_dir(tmp_path) -> None:
    # A tiny LLM saved to disk is identified by its path, so the checkpoint can find it.
    from recipe_chain.loading import load_llm

    llm, tok = tiny_causal_lm("llama")
    llm.save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    disk_llm, _ = load_llm(tmp_path / "llm")
    editor = tiny_models().editor
    from recipe_chain import RecipeEditor

    checkpoint = RecipeEditor.from_backbone(
        disk_llm, editor.encoder.backbone, editor.encoder.tokenizer, backbone_id=editor.config.backbone_id,
        rep_dim=16, head_hidden_dim=32, prompt_hidden_dim=32, backbone_tuning="frozen",
    ).save_pretrained(tmp_path / "ckpt")
    loaded = load_models(checkpoint)
    assert loaded.trained and loaded.checkpoint == str(checkpoint)
    assert loaded.editor.config.llm_id == str(tmp_path / "llm")
    with pytest.raises(FileNotFoundError, match="No RECIPE checkpoint"):
        load_models(tmp_path / "nowhere")
    config = json.loads((checkpoint / "config.json").read_text())
    config["llm_id"] = "some/unknown-model"
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown-model"):
        load_models(checkpoint)


def test_checkpoint_option_reaches_the_loader(monkeypatch, capsys, tmp_path) -> None:
    seen = []
    tiny = shared_models()
    monkeypatch.setattr(store_commands, "load_models", lambda checkpoint=None, **kw: seen.append(checkpoint) or tiny)
    assert cli.main(["--store", str(tmp_path / "s"), "--checkpoint", "/some/ckpt", "list"]) == 0
    assert seen == ["/some/ckpt"]


# ------------------------------------------------------------------------- real models
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_console_script_demo_with_real_models(tmp_path) -> None:
    """`recipe-chain demo` end to end on the real default LLM and encoder (untrained fallback
    until a checkpoint ships), as a subprocess, within the 2-minute budget."""
    env = dict(os.environ)
    env.setdefault("RECIPE_CHAIN_CACHE", "/tmp/rc-cache")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "recipe_chain.cli", "demo", "--n-edits", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=280,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "AFTER (RECIPE)" in proc.stdout and "Danielle Darrieux" in proc.stdout and "Demo wall time" in proc.stdout
    assert elapsed < 120


# ------------------------------------------------------------------------- Chroma server
@pytest.mark.server
@pytest.mark.timeout(180)
def test_commands_against_a_chroma_server(run, tmp_path, monkeypatch) -> None:
    from recipe_chain.integrations import ChromaServer

    monkeypatch.setenv(store_commands.SERVER_TOKEN_ENV, "cli-token")
    with ChromaServer(tmp_path / "server-data", auth_token="cli-token") as server:
        code, out, _ = run("--server", server.url, "edit", EDITS[1][0], EDITS[1][1], "--id", "edwin", store_path=None)
        assert code == 0 and "Added edit edwin" in out
        code, out, _ = run("--server", server.url, "list", store_path=None)
        assert code == 0 and "edwin" in out and "1 of 1 active edits" in out
        code, out, _ = run("--server", server.url, "ask", EDITS[1][0], "--max-new-tokens", "2", store_path=None)
        assert code == 0 and "\n--\n" in out
        assert run("--server", server.url, "delete", "edwin", store_path=None)[0] == 0
        assert "No active edits" in run("--server", server.url, "list", store_path=None)[1]
    code, _, err = run("--server", server.url, "list", store_path=None)  # the server is gone
    assert code == 2 and err.startswith("error: ")


def test_find_shared_data_searches_the_working_directory_and_its_parents(tmp_path, monkeypatch) -> None:
    from recipe_chain.demo import find_shared_data

    data = tmp_path / "shared" / "data" / "counterfact" / "x.json"
    data.parent.mkdir(parents=True)
    data.write_text("[]")
    nested = tmp_path / "project" / "cookbook"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)  # a notebook runs in cookbook/, the data lies beside the project
    assert find_shared_data("counterfact/x.json") == data.resolve()
    with pytest.raises(FileNotFoundError, match="counterfact/missing.json"):
        find_shared_data("counterfact/missing.json")


def test_ask_reports_the_verifier_decision(monkeypatch, capsys, tmp_path) -> None:
    import torch
    from transformers import AutoTokenizer, BertModel

    from recipe_chain.verifier import EditVerifier
    from tiny import tiny_backbone_dir
    from tiny_store import tiny_models

    m = tiny_models()
    path = tiny_backbone_dir(tmp_path / "bert")
    verifier = EditVerifier.from_backbone(BertModel.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                                          backbone_id=str(path), num_layers=1, candidate_k=8,
                                          prefilter_margin=-1e6, threshold=0.5)
    verifier.probabilities = lambda qs, ss: torch.tensor(  # type: ignore[method-assign]
        [0.9 if "Darrieux" in q and "Darrieux" in s else 0.2 for q, s in zip(qs, ss)])
    m.editor.gate_verifier = verifier
    monkeypatch.setattr(store_commands, "load_models", lambda checkpoint=None, **kw: m)
    store = tmp_path / "store"
    for prompt, target, subject in EDITS[:3]:
        assert cli.main(["--store", str(store), "edit", prompt, target, "--subject", subject]) == 0
    capsys.readouterr()
    assert cli.main(["--store", str(store), "ask", "What is the mother tongue of Danielle Darrieux?",
                     "--max-new-tokens", "2"]) == 0
    report = capsys.readouterr().out.split("\n--\n")[1]
    assert report.startswith("edit fired:") and "Darrieux" in report.splitlines()[0]
    assert "verifier P=0.900 > 0.500" in report
    assert cli.main(["--store", str(store), "ask", "Who wrote Hamlet?", "--max-new-tokens", "2"]) == 0
    assert "no edit fired: verifier P=0.200 <= 0.500" in capsys.readouterr().out
