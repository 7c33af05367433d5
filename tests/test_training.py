"""End-to-end tests of the RECIPE training loop on tiny random models.

A tiny 2-layer LLM (``tiny_models.tiny_causal_lm``) and a tiny 2-layer BERT backbone
(``tiny.tiny_editor``) train for ~20 steps on a small, self-made CounterFact-style file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recipe_chain import RecipeEditor
from recipe_chain.cli import build_parser, main
from recipe_chain.errors import CheckpointMismatchError
from recipe_chain.prefix_lm import PrefixedCausalLM
from recipe_chain.training import LOSS_NAMES, LocalityCache, TrainingConfig, train
from recipe_chain.training import examples as examples_module
from recipe_chain.training import step as step_module
from tiny import tiny_editor
from tiny_models import tiny_causal_lm

SUBJECTS = ["Paris", "Rome", "London", "Alex", "Yossel", "Shayna", "Edwin", "Toko", "Danielle", "Michel",
            "UniFirst", "England", "Italy", "France", "Darrieux", "Rocard"]
TARGETS = ["French", "English", "Islam", "piano", "guitar", "Rome", "Paris", "London"]


def _write_data(directory: Path) -> tuple[Path, Path]:
    records = []
    for i, subject in enumerate(SUBJECTS):
        relation = ["The mother tongue of {} is", "The capital city of {} is", "{} plays the"][i % 3]
        records.append({
            "case_id": i,
            "prompt": relation.format(subject),
            "target_new": TARGETS[i % len(TARGETS)],
            "ground_truth": TARGETS[(i + 3) % len(TARGETS)],
            "subject": subject,
            "rephrase_prompt": "In other words, " + relation.format(subject).lower(),
            "locality_prompt": relation.format(SUBJECTS[(i + 5) % len(SUBJECTS)]),
            "locality_ground_truth": TARGETS[(i + 1) % len(TARGETS)] if i % 4 else "",  # some without an answer
        })
    data = directory / "edits.json"
    data.write_text(json.dumps(records))
    questions = directory / "questions.jsonl"
    lines = [{"question": f"who is {s.lower()}?", "answer": [s]} for s in SUBJECTS]
    questions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return data, questions


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("training")
    data, questions = _write_data(root)
    return {"root": root, "data": data, "questions": questions, "backbone": root / "backbone"}


def _config(files: dict[str, Path], **overrides) -> TrainingConfig:  # noqa: ANN003
    options = dict(
        data=[files["data"]],
        extra_locality=[files["questions"]],
        extra_locality_skip=4,
        extra_locality_per_batch=2,
        steps=20,
        batch_size=4,
        lr=3e-3,
        prompt_lr=3e-3,
        backbone_lr=3e-3,
        warmup_steps=2,
        eval_examples=4,
        eval_interval=10,
        checkpoint_interval=10,
        key_queue_size=8,
        locality_topk=8,
        rep_dim=32,
        backbone_tuning="lora",
        device="cpu",
        seed=0,
    )
    options.update(overrides)
    return TrainingConfig(**options)


def _models(files: dict[str, Path], arch: str = "llama", seed: int = 0):  # noqa: ANN202
    """A tiny LLM and a tiny editor with the "vocab" prompt encoder (so every loss applies).

    The paper's MLP prompt encoder is trained by the CLI tests, which use the defaults.
    """
    llm, tokenizer = tiny_causal_lm(arch)
    editor = tiny_editor(llm, files["backbone"], seed=seed, backbone_tuning="lora", prompt_encoder="vocab",
                         prompt_len=4)
    return llm, tokenizer, editor


def _trained_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoint" / "model.safetensors"))


def _train_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["kind"] == "train"]


@pytest.fixture(scope="module")
def reference_run(files: dict[str, Path]):  # noqa: ANN201
    """One uninterrupted 20-step run shared by several tests."""
    llm, tokenizer, editor = _models(files)
    llm_before = {k: v.clone() for k, v in llm.state_dict().items()}
    out = files["root"] / "reference"
    result = train(_config(files), llm, tokenizer, editor, out_dir=out)
    return {"result": result, "editor": editor, "llm": llm, "llm_before": llm_before, "out": out}


# ---------------------------------------------------------------------- end to end


def test_tiny_run_lowers_the_loss_and_writes_its_outputs(reference_run) -> None:  # noqa: ANN001
    out: Path = reference_run["out"]
    result = reference_run["result"]
    rows = _train_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 21))
    for name in (*LOSS_NAMES, "total", "lr_heads", "lr_prompt", "lr_backbone", "steps_per_s", "wall_time"):
        assert all(name in r for r in rows), name
    first = sum(r["total"] for r in rows[:3]) / 3
    last = sum(r["total"] for r in rows[-3:]) / 3
    assert last < first, (first, last)
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [e["step"] for e in evals] == [10, 20]
    assert {"reliability_acc", "generality_acc", "retrieval_acc_prompt", "locality_rejected"} <= set(evals[-1])
    assert (out / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "locality_cache.pt").is_file() and (out / "trainer_state.pt").is_file()
    assert result.steps == 20 and result.resumed_from is None and result.steps_per_s > 0
    assert result.checkpoint == out / "checkpoint"
    assert set(LOSS_NAMES) <= set(result.final_losses)


def test_the_llm_stays_frozen(reference_run) -> None:  # noqa: ANN001
    llm = reference_run["llm"]
    assert not any(p.requires_grad for p in llm.parameters())
    for name, before in reference_run["llm_before"].items():
        assert torch.equal(llm.state_dict()[name], before), name


def test_checkpoint_round_trips_bit_exact(reference_run, files) -> None:  # noqa: ANN001
    editor: RecipeEditor = reference_run["editor"]
    llm = reference_run["llm"]
    loaded = RecipeEditor.from_pretrained(reference_run["result"].checkpoint, llm=llm)
    mine, theirs = editor.trainable_state_dict(), loaded.trainable_state_dict()
    assert set(mine) == set(theirs)
    assert any(k.endswith("lora_b") for k in mine)  # the backbone adapter is trained and saved
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name
    assert loaded.fingerprint == editor.fingerprint
    text = ["The mother tongue of Paris is"]
    assert torch.equal(loaded.encode_queries(text), editor.encode_queries(text))
    # Training changed the editor: it differs from a fresh one with the same seed.
    fresh = tiny_editor(llm, files["backbone"], seed=0, backbone_tuning="lora").trainable_state_dict()
    assert not torch.equal(fresh["prompt_encoder.net.1.weight"], mine["prompt_encoder.net.1.weight"])
    adapters = [k for k in mine if k.endswith("lora_b") and ".pooler." not in k]  # the pooler output is unused
    assert adapters and not any(torch.equal(fresh[k], mine[k]) for k in adapters)


def test_resumed_run_equals_the_uninterrupted_one(reference_run, files) -> None:  # noqa: ANN001
    llm, tokenizer, editor = _models(files)
    out = files["root"] / "resumed"
    config = _config(files)
    first = train(config, llm, tokenizer, editor, out_dir=out, until_step=10)
    assert first.steps == 10 and (out / "checkpoint" / "config.json").is_file()
    llm2, tokenizer2, editor2 = _models(files, seed=5)  # other initial weights: all must come from the state
    second = train(config, llm2, tokenizer2, editor2, out_dir=out)
    assert second.resumed_from == 10 and second.steps == 20
    expected = _trained_tensors(reference_run["out"])
    got = _trained_tensors(out)
    assert set(expected) == set(got)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    keys = ("step", *LOSS_NAMES, "total")
    assert [[r[k] for k in keys] for r in _train_rows(out)] == [
        [r[k] for k in keys] for r in _train_rows(reference_run["out"])
    ]


def test_same_seed_same_weights_other_seed_other_weights(files) -> None:  # noqa: ANN001
    outs = []
    for i, seed in enumerate((0, 0, 1)):
        llm, tokenizer, editor = _models(files)
        out = files["root"] / f"seed{i}"
        train(_config(files, steps=3, seed=seed, eval_examples=0), llm, tokenizer, editor, out_dir=out)
        outs.append(_trained_tensors(out))
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    assert not all(torch.equal(outs[0][k], outs[2][k]) for k in outs[0])


@pytest.mark.parametrize("arch", ["gpt2", "qwen2", "gemma3"])
def test_other_causal_lm_architectures_train(files, arch: str) -> None:  # noqa: ANN001
    llm, tokenizer, editor = _models(files, arch)
    out = files["root"] / f"arch-{arch}"
    result = train(_config(files, steps=3, eval_examples=0), llm, tokenizer, editor, out_dir=out)
    assert result.steps == 3
    assert all(v == v and v < float("inf") for v in result.final_losses.values())
    assert RecipeEditor.from_pretrained(out / "checkpoint", llm=llm).config.llm_id == f"tiny-{arch}"


# ---------------------------------------------------------------------- run management


def test_resume_refuses_changed_settings_and_no_resume_starts_over(files) -> None:  # noqa: ANN001
    llm, tokenizer, editor = _models(files)
    out = files["root"] / "changed"
    train(_config(files, steps=2, eval_examples=0), llm, tokenizer, editor, out_dir=out)
    with pytest.raises(ValueError, match="different settings.*batch_size"):
        train(_config(files, steps=2, eval_examples=0, batch_size=5), llm, tokenizer, editor, out_dir=out)
    result = train(_config(files, steps=2, eval_examples=0, batch_size=5), llm, tokenizer, editor, out_dir=out,
                   resume=False)
    assert result.resumed_from is None
    assert [r["step"] for r in _train_rows(out)] == [1, 2]


def test_bad_inputs_raise_clear_errors(files, tmp_path: Path) -> None:  # noqa: ANN001
    llm, tokenizer, editor = _models(files)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        train(_config(files, data=[tmp_path / "nope.json"]), llm, tokenizer, editor, out_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="rep_dim"):
        train(_config(files, rep_dim=8), llm, tokenizer, editor, out_dir=tmp_path / "b")
    other_llm, other_tok = tiny_causal_lm("gpt2")
    with pytest.raises(CheckpointMismatchError, match="tiny-llama"):
        train(_config(files), other_llm, other_tok, editor, out_dir=tmp_path / "c")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            train(_config(files, device="cuda"), llm, tokenizer, editor, out_dir=tmp_path / "d")
    with pytest.raises(ValueError, match="batch_size"):
        train(_config(files, batch_size=64, eval_examples=0), llm, tokenizer, editor, out_dir=tmp_path / "e")
    with pytest.raises(ValueError):
        TrainingConfig(data=[files["data"]], editor_options={"rep_dim": 3})


# ---------------------------------------------------------------------- pieces


def test_chunked_lm_logits_match_one_batch() -> None:
    llm, tokenizer = tiny_causal_lm("llama")
    lm = PrefixedCausalLM(llm, tokenizer)
    prompts = lm.tokenize(["The capital of France is", "Hi", "The mother tongue of Danielle Darrieux is", "Alex"])
    targets = lm.tokenize_targets(["Paris", "English too", "French", "London"])
    g = torch.Generator().manual_seed(0)
    prefixes = [torch.randn(3, 32, generator=g) * 0.02 for _ in prompts]
    whole = lm.target_logits(prompts, targets, prefixes)
    chunked = step_module.lm_target_logits(lm, prompts, targets, prefixes, chunk=2)
    assert torch.equal(whole[1], chunked[1]) and torch.equal(whole[2], chunked[2])
    mask = whole[2]
    assert torch.allclose(whole[0][mask], chunked[0][mask], atol=1e-5)


def test_locality_cache_computes_once_and_persists(tmp_path: Path) -> None:
    llm, tokenizer = tiny_causal_lm("llama")
    lm = PrefixedCausalLM(llm, tokenizer)
    cache = LocalityCache(lm, topk=5, max_tokens=2, greedy_tokens=3)
    items = [("The capital of France is", "Paris"), ("Hello, my name is", None)]
    known, greedy = cache.get(items)
    assert len(known.target_ids) <= 2 and known.top_idx.shape == (len(known.target_ids), 5)
    assert known.top_idx.dtype == torch.int32 and known.top_logp.dtype == torch.float16
    # The teacher is the frozen model's own distribution: its argmax is the first top-k id.
    logits, _, _ = lm.target_logits(lm.tokenize([items[0][0]]), [list(known.target_ids)])
    assert torch.equal(logits[0].argmax(-1).to(torch.int32), known.top_idx[:, 0])
    # Without an answer the scored tokens are the frozen model's greedy continuation.
    assert len(greedy.target_ids) == 3
    ids = lm.tokenize([items[1][0]])[0]
    for tok in greedy.target_ids:
        assert int(llm(input_ids=torch.tensor([ids])).logits[0, -1].argmax()) == tok
        ids = ids + [tok]
    assert cache.dirty and len(cache) == 2
    cache.save(tmp_path / "cache.pt")
    again = LocalityCache(lm, topk=5, max_tokens=2, greedy_tokens=3)
    assert again.load(tmp_path / "cache.pt") and len(again) == 2 and not again.dirty
    [loaded] = again.get([items[0]])
    assert torch.equal(loaded.top_idx, known.top_idx) and torch.equal(loaded.top_logp, known.top_logp)
    assert not again.dirty  # served from the cache, nothing computed
    other = LocalityCache(lm, topk=7, max_tokens=2, greedy_tokens=3)
    assert not other.load(tmp_path / "cache.pt") and len(other) == 0  # other settings: ignored


def test_locality_prompt_equal_to_another_edit_prompt_shares_its_group(files, tmp_path: Path) -> None:  # noqa: ANN001
    records = json.loads(files["data"].read_text())[:6]
    records[0]["locality_prompt"] = records[1]["prompt"].upper()  # same prompt up to case and spacing
    path = tmp_path / "edits.json"
    path.write_text(json.dumps(records))
    llm, tokenizer, editor = _models(files)
    data = examples_module.prepare_data(_config(files, data=[path], eval_examples=0), editor,
                                   PrefixedCausalLM(llm, tokenizer))
    by_prompt = {ex.prompt: ex for ex in data.train}
    first, second = by_prompt[records[0]["prompt"]], by_prompt[records[1]["prompt"]]
    assert first.locality_groups == [second.group]
    assert by_prompt[records[2]["prompt"]].locality_groups == [-1]
    assert len({ex.group for ex in data.train}) == 6


def test_data_order_is_a_permutation_per_epoch() -> None:
    order = examples_module.DataOrder(10, seed=3)
    epoch0 = [i for s in range(5) for i in order.batch(s, 2)]
    epoch1 = [i for s in range(5, 10) for i in order.batch(s, 2)]
    assert sorted(epoch0) == list(range(10)) == sorted(epoch1)
    assert epoch0 != epoch1
    assert examples_module.DataOrder(10, seed=3).batch(7, 2) == order.batch(7, 2)


def test_weighted_data_order_draws_each_source_by_its_weight() -> None:
    sources = [0] * 10 + [1] * 4
    order = examples_module.DataOrder(14, seed=1, sources=sources, weights=[0.5, 2.0])
    assert order.n == 5 + 8
    epoch = [i for s in range(13) for i in order.batch(s, 1)]
    assert sum(sources[i] == 1 for i in epoch) == 8 and sorted(set(i for i in epoch if i >= 10)) == [10, 11, 12, 13]
    assert sum(sources[i] == 0 for i in epoch) == 5 and len({i for i in epoch if i < 10}) == 5  # a seeded half
    later = [i for s in range(13, 26) for i in order.batch(s, 1)]
    assert {i for i in later if i < 10} != {i for i in epoch if i < 10}  # another half next epoch
    assert examples_module.DataOrder(14, seed=1, sources=sources, weights=[0.5, 2.0]).batch(20, 3) == order.batch(20, 3)
    with pytest.raises(ValueError, match="data_weights"):
        TrainingConfig(data=["a.json", "b.json"], data_weights=[1.0])


def test_mixed_sources_report_per_source_metrics(files, tmp_path: Path) -> None:  # noqa: ANN001
    second = tmp_path / "other.json"
    second.write_text(files["data"].read_text())
    llm, tokenizer, editor = _models(files)
    config = _config(files, data=[files["data"], second], data_weights=[1.0, 0.5], steps=2, eval_interval=2,
                     eval_examples=8, checkpoint_interval=2)
    train(config, llm, tokenizer, editor, out_dir=tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["kind"] == "eval"][-1]
    per_source = {k for k in last if "/" in k}
    assert per_source and {k.split("/")[1] for k in per_source} <= {"edits", "other"}
    assert all(0.0 <= last[k] <= 1.0 for k in per_source)


def test_cli_train_reads_file_weights_and_refuses_evaluation_sets(files, tmp_path: Path) -> None:  # noqa: ANN001
    from recipe_chain.commands.train import config_from_args

    args = build_parser().parse_args(["train", "--data", f"{files['data']}:0.5", "--data", str(files["data"]),
                                      "--llm", "default", "--out", "x"])
    config = config_from_args(args)
    assert config.data == [files["data"], files["data"]] and config.data_weights == [0.5, 1.0]
    evaluation = tmp_path / "counterfact" / "eval.json"
    evaluation.parent.mkdir()
    evaluation.write_text(files["data"].read_text())
    with pytest.raises(ValueError, match="never trained on"):
        config_from_args(build_parser().parse_args(["train", "--data", str(evaluation), "--llm", "default",
                                                    "--out", "x"]))
    with pytest.raises(ValueError, match="positive"):
        config_from_args(build_parser().parse_args(["train", "--data", f"{files['data']}:0", "--llm", "default",
                                                    "--out", "x"]))


# ---------------------------------------------------------------------- CLI


def test_cli_train_maps_options_to_the_config(files) -> None:  # noqa: ANN001
    from recipe_chain.commands.train import config_from_args

    args = build_parser().parse_args([
        "train", "--data", str(files["data"]), "--data", str(files["data"]), "--llm", "default", "--out", "x",
        "--steps", "7", "--batch-size", "4", "--lr", "0.01", "--backbone-lr", "0.002", "--prompt-lr", "0.005",
        "--weight-locality", "0.5",
        "--prompt-len", "2", "--rep-dim", "64", "--backbone-tuning", "frozen", "--seed", "3", "--device", "cpu",
        "--threads", "1", "--hinge-threshold", "none", "--extra-locality", str(files["questions"]),
    ])
    config = config_from_args(args)
    assert config.data == [files["data"], files["data"]] and config.extra_locality == [files["questions"]]
    assert (config.steps, config.batch_size) == (7, 4)
    assert (config.lr, config.backbone_lr, config.prompt_lr) == (0.01, 0.002, 0.005)
    assert (config.weight_locality, config.weight_reliability) == (0.5, 1.0)
    assert (config.prompt_len, config.rep_dim, config.backbone_tuning, config.seed) == (2, 64, "frozen", 3)
    assert config.hinge_threshold is None and config.threads == 1 and config.device == "cpu"
    defaults = config_from_args(build_parser().parse_args(
        ["train", "--data", str(files["data"]), "--llm", "default", "--out", "x"]))
    assert defaults == TrainingConfig(data=[files["data"]])


def test_cli_train_reports_a_missing_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", str(tmp_path / "missing.json"), "--llm", "default", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--llm", "default", "--out", "x"])  # --data is required


@pytest.mark.integration
def test_cli_train_runs_on_a_local_model_directory(files, tmp_path: Path) -> None:  # noqa: ANN001
    """``--llm PATH`` with a tiny model saved to disk; the editor uses the real MiniLM backbone."""
    llm, tokenizer = tiny_causal_lm("llama")
    model_dir = tmp_path / "tiny-llm"
    llm.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "run"
    argv = [
        "train", "--data", str(files["data"]), "--llm", str(model_dir), "--out", str(out), "--steps", "3",
        "--batch-size", "4", "--eval-examples", "0", "--device", "cpu", "--threads", "1",
    ]
    assert main([*argv, "--stop-after", "2"]) == 0  # as if interrupted after step 2
    assert [r["step"] for r in _train_rows(out)] == [1, 2]
    assert main(argv) == 0  # the same command resumes
    loaded = RecipeEditor.from_pretrained(out / "checkpoint")
    assert loaded.config.llm_id == str(model_dir)
    assert [r["step"] for r in _train_rows(out)] == [1, 2, 3]


def _cli_args_for_a_saved_tiny_llm(files: dict[str, Path], tmp_path: Path) -> list[str]:
    """Save a tiny LLM under ``tmp_path``; the ``train`` options every CLI run below shares."""
    llm, tokenizer = tiny_causal_lm("llama")
    model_dir = tmp_path / "tiny-llm"
    llm.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return ["--data", str(files["data"]), "--llm", str(model_dir), "--batch-size", "4", "--eval-examples", "0",
            "--device", "cpu", "--threads", "1"]


@pytest.mark.parametrize("scale", [0.0, 0.25, 1.0])
def test_prompt_key_grad_scales_only_the_gradient(scale: float) -> None:
    from recipe_chain.training.step import scale_grad as _scale_grad

    x = torch.randn(3, 4, requires_grad=True)
    y = _scale_grad(x, scale)
    torch.testing.assert_close(y, x)
    if scale == 0.0:
        assert not y.requires_grad  # detached: the keys get nothing from the LLM-side losses
        return
    (y * torch.arange(12.0).view(3, 4)).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(12.0).view(3, 4) * scale)


@pytest.mark.integration
def test_cli_train_init_from_keeps_the_trained_heads(files, tmp_path: Path) -> None:  # noqa: ANN001
    """``--init-from`` starts a new run from a checkpoint, without re-tying its query head."""
    common = _cli_args_for_a_saved_tiny_llm(files, tmp_path)
    assert main(["train", *common, "--out", str(tmp_path / "first"), "--steps", "3"]) == 0
    first = _trained_tensors(tmp_path / "first")
    tiny_lr = ["--lr", "1e-12", "--prompt-lr", "1e-12", "--backbone-lr", "1e-12"]
    argv = ["train", *common, *tiny_lr, "--out", str(tmp_path / "second"), "--steps", "1",
            "--init-from", str(tmp_path / "first" / "checkpoint")]
    assert main(argv) == 0
    second = _trained_tensors(tmp_path / "second")
    name = "encoder.query_head.proj.weight"
    torch.testing.assert_close(second[name], first[name], rtol=0, atol=1e-6)
    assert not torch.allclose(second[name], second["encoder.knowledge_head.proj.weight"])
    saved = json.loads((tmp_path / "second" / "training_config.json").read_text())
    assert saved["tie_head_init"] is False


@pytest.mark.integration
def test_cli_train_init_encoder_from_trains_only_a_new_prompt_encoder(files, tmp_path: Path) -> None:  # noqa: ANN001
    """``--init-encoder-from`` + zero retrieval/sentinel weights + ``--prompt-key-grad 0``: the retriever is frozen."""
    common = _cli_args_for_a_saved_tiny_llm(files, tmp_path)
    assert main(["train", *common, "--out", str(tmp_path / "first"), "--steps", "3"]) == 0  # the paper's MLP
    first = _trained_tensors(tmp_path / "first")
    argv = ["train", *common, "--out", str(tmp_path / "second"), "--steps", "2",
            "--init-encoder-from", str(tmp_path / "first" / "checkpoint"), "--prompt-encoder", "vocab",
            "--prompt-len", "4", "--weight-retrieval", "0",
            "--weight-sentinel", "0", "--prompt-key-grad", "0"]
    assert main(argv) == 0
    second = _trained_tensors(tmp_path / "second")
    for name in first:
        if not name.startswith("prompt_encoder."):
            torch.testing.assert_close(second[name], first[name], rtol=0, atol=0)
    assert "prompt_encoder.token_query.weight" in second and "prompt_encoder.token_query.weight" not in first
    config = json.loads((tmp_path / "second" / "checkpoint" / "config.json").read_text())
    assert (config["prompt_encoder"], config["prompt_len"]) == ("vocab", 4)


@pytest.mark.integration
def test_cli_train_freeze_retriever_adds_a_prompt_code_and_keeps_every_retriever_tensor(files, tmp_path: Path) -> None:  # noqa: ANN001,E501
    """``--freeze-retriever`` with the default loss weights: only the prompt code and the prompt encoder train."""
    common = _cli_args_for_a_saved_tiny_llm(files, tmp_path)
    first_args = ["train", *common, "--out", str(tmp_path / "first"), "--steps", "3", "--backbone-tuning", "lora"]
    assert main(first_args) == 0
    first = _trained_tensors(tmp_path / "first")
    options = ["--steps", "3", "--init-encoder-from", str(tmp_path / "first" / "checkpoint"), "--freeze-retriever",
               "--prompt-encoder", "vocab", "--prompt-len", "4", "--prompt-code-dim", "8"]
    assert main(["train", *common, *options, "--out", str(tmp_path / "second")]) == 0
    second = _trained_tensors(tmp_path / "second")
    assert any(".lora_a" in name for name in first)
    for name in first:
        if not name.startswith("prompt_encoder."):
            torch.testing.assert_close(second[name], first[name], rtol=0, atol=0)
    code = sorted(name for name in second if name.startswith("encoder.prompt_code_head."))
    assert code and not any(name in first for name in code)
    old = RecipeEditor.from_pretrained(tmp_path / "first" / "checkpoint")
    new = RecipeEditor.from_pretrained(tmp_path / "second" / "checkpoint")
    assert new.config.rep_dim == old.config.rep_dim + 8 and new.config.prompt_code_dim == 8
    texts = ["The mother tongue of Danielle Darrieux is English"]
    # Same retrieval part. Not bit-identical: with a prompt code, a statement's two backbone passes
    # run as one paired pass, which adds each LoRA term apart from the base weight (float rounding).
    torch.testing.assert_close(new.encode_statements(texts)[:, :-8], old.encode_statements(texts), rtol=0, atol=1e-5)
    # the code head did train: a second run with a near-zero learning rate ends elsewhere
    frozen_lr = ["--lr", "1e-12", "--prompt-lr", "1e-12"]
    assert main(["train", *common, *options, *frozen_lr, "--out", str(tmp_path / "third")]) == 0
    third = _trained_tensors(tmp_path / "third")
    assert any(not torch.allclose(second[name], third[name]) for name in code)
    saved = json.loads((tmp_path / "second" / "training_config.json").read_text())
    assert saved["freeze_retriever"] is True


@pytest.mark.integration
def test_cli_train_target_slots_writes_a_self_contained_checkpoint(files, tmp_path: Path) -> None:  # noqa: ANN001
    """``--prompt-target-slots``: the prefix ends in the target's tokens; the checkpoint carries the LLM tokenizer."""
    common = _cli_args_for_a_saved_tiny_llm(files, tmp_path)
    assert main(["train", *common, "--out", str(tmp_path / "first"), "--steps", "2"]) == 0
    options = ["--steps", "2", "--init-encoder-from", str(tmp_path / "first" / "checkpoint"), "--freeze-retriever",
               "--prompt-encoder", "vocab", "--prompt-len", "2", "--prompt-context-len", "2",
               "--prompt-target-slots", "4"]
    assert main(["train", *common, *options, "--out", str(tmp_path / "second")]) == 0
    checkpoint = tmp_path / "second" / "checkpoint"
    assert (checkpoint / "llm_tokenizer").is_dir()
    from recipe_chain.loading import load_llm

    editor = RecipeEditor.from_pretrained(checkpoint, llm=load_llm(str(tmp_path / "tiny-llm"))[0])
    assert editor.config.prompt_target_slots == 4 and editor.llm_tokenizer is not None
    assert "prompt_encoder.token_query.weight" not in _trained_tensors(tmp_path / "second")  # no key-decoded slots
    targets = ["Paris", "a very long answer of many words indeed"]
    lengths = [min(len(ids), 4) for ids in editor.target_token_ids(targets)]
    assert lengths[0] < lengths[1] == 4
    prefixes = editor.prefix_vectors(editor.encode_statements([f"X is {t}" for t in targets]), targets)
    assert [p.shape[0] for p in prefixes] == [2 + n for n in lengths]


@pytest.mark.integration
def test_cli_train_retriever_only_keeps_every_prompt_tensor(files, tmp_path: Path) -> None:  # noqa: ANN001
    """Zero LLM-side loss weights from a trained editor: a new retriever and sentinel for the same prompt vectors.

    The sanity evals in between run the prompt encoder too; they must not move its running statistics.
    """
    common = _cli_args_for_a_saved_tiny_llm(files, tmp_path)
    assert main(["train", *common, "--out", str(tmp_path / "first"), "--steps", "3", "--backbone-tuning", "lora"]) == 0
    options = ["--init-encoder-from", str(tmp_path / "first" / "checkpoint"), "--freeze-retriever",
               "--prompt-encoder", "vocab", "--prompt-len", "4", "--prompt-code-dim", "8"]
    assert main(["train", *common, *options, "--steps", "3", "--out", str(tmp_path / "second")]) == 0
    second = _trained_tensors(tmp_path / "second")
    retriever_only = ["--init-from", str(tmp_path / "second" / "checkpoint"), "--weight-reliability", "0",
                      "--weight-generality", "0", "--weight-locality", "0", "--weight-prompt-tokens", "0",
                      "--steps", "3", "--eval-interval", "1", "--eval-examples", "4"]
    assert main(["train", *common, *retriever_only, "--out", str(tmp_path / "third")]) == 0
    third = _trained_tensors(tmp_path / "third")
    prompt_side = [n for n in second if n.startswith(("prompt_encoder.", "encoder.prompt_code_head."))]
    assert any(n.endswith("running_mean") for n in prompt_side)
    for name in prompt_side:
        torch.testing.assert_close(third[name], second[name], rtol=0, atol=0)
    assert not torch.equal(third["encoder.query_head.proj.weight"], second["encoder.query_head.proj.weight"])


def test_cli_train_options_come_from_the_config_fields(capsys: pytest.CaptureFixture[str]) -> None:
    from recipe_chain.commands.train import _OWN_OPTIONS

    args = build_parser().parse_args([
        "train", "--data", "x.json", "--llm", "default", "--out", "o", "--weight-decay", "0.01",
        "--locality-topk", "8", "--no-freeze-retriever", "--prompt-encoder", "vocab",
    ])
    assert set(args.config_fields) == set(TrainingConfig.model_fields) - set(_OWN_OPTIONS)
    assert (args.weight_decay, args.locality_topk, args.freeze_retriever, args.prompt_encoder) == (0.01, 8, False, "vocab")
    assert args.steps is None  # left out: the config's default applies
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert " ".join(TrainingConfig.model_fields["prompt_code_dim"].description.split()).rstrip(".") in help_text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "x", "--llm", "default", "--out", "o", "--prompt-encoder", "x"])
