"""The gate reads the asking part of long inputs: whole trailing sentences that fit the encoder."""

from __future__ import annotations

import pytest

from recipe_chain.query_window import asking_window, split_sentences
from tiny import minilm_tokenizer


def _words(texts):  # one token per word, plus [CLS] and [SEP]
    return [len(t.split()) + 2 for t in texts]


def test_split_sentences_on_ends_and_lines() -> None:
    assert split_sentences("A b. C d?  E!\n\nF; g\n") == ["A b.", "C d?", "E!", "F;", "g"]
    assert split_sentences("   ") == []


def test_short_text_is_returned_unchanged() -> None:
    assert asking_window("Who runs Acme Rockets?", _words, 64) == "Who runs Acme Rockets?"


def test_a_long_text_is_cut_to_its_last_sentence() -> None:
    text = "one two three. four five six. seven eight nine ten?"
    assert asking_window(text, _words, 20) == text  # fits: unchanged
    assert asking_window(text, _words, 9) == "seven eight nine ten?"  # the last two would fit, yet only the last is read
    assert asking_window("context line\nWho runs Acme Rockets?", _words, 6) == "Who runs Acme Rockets?"


def test_an_overlong_last_sentence_keeps_its_last_tokens() -> None:
    text = "context. " + " ".join(f"w{i}" for i in range(100)) + " is"
    window = asking_window(text, _words, 12, lambda s, n: " ".join(s.split()[-n:]))
    assert window.split() == [f"w{i}" for i in range(91, 100)] + ["is"]
    without_tail = asking_window(text, _words, 12)
    assert _words([without_tail])[0] <= 12 and without_tail.endswith("w99 is")


def test_encoder_windows_a_2000_token_query_and_still_rejects_long_statements(llm, backbone_dir) -> None:
    from tiny import tiny_editor

    editor = tiny_editor(llm, backbone_dir)
    background = " ".join(f"Background sentence number {i} says nothing about rockets." for i in range(230))
    long_query = background + " Who is the CEO of Acme Rockets?"
    assert editor.encoder.count_tokens([long_query])[0] > 2000
    window = editor.encoder.query_windows([long_query])[0]
    assert window == "Who is the CEO of Acme Rockets?"
    assert editor.encoder.count_tokens([window])[0] <= editor.encoder.max_length
    reps = editor.encode_queries([long_query, window])  # never raises
    assert reps.shape[0] == 2 and float((reps[0] - reps[1]).abs().max()) < 1e-4
    with pytest.raises(ValueError, match="accepts at most"):
        editor.encode_statements([long_query])


def test_minilm_tail_tokens_decode_to_the_end_of_the_sentence() -> None:
    tok = minilm_tokenizer()
    ids = tok("alpha beta gamma delta", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[-2:]) == "gamma delta"
