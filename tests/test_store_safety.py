"""Nothing acknowledged is lost: one writer per directory, ids never reused, normalised
identity, targets the encoder can read, clear errors for bad paths, safe CLI output.

Each test reproduces a failure a user hit (see the store's module docs for the rules).
The multi-process fault test lives in ``test_store_writers.py``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from recipe_chain import cli
from recipe_chain.commands import store_commands
from recipe_chain.commands.terminal import terminal_safe
from recipe_chain.demo import EditingModels
from recipe_chain.editor import RecipeEditor
from recipe_chain.errors import (
    EditNotFoundError,
    NamespaceNotFoundError,
    ReadOnlyStoreError,
    StoreBusyError,
    StorePathError,
)
from recipe_chain.store import RecipeKnowledgeStore
from recipe_chain.store_lock import LOCK_FILE
from tiny import tiny_editor
from tiny_store import shared_models

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def editor(llm, backbone_dir: Path) -> RecipeEditor:  # noqa: ANN001
    return tiny_editor(llm, backbone_dir, seed=0)


@pytest.fixture
def store(editor: RecipeEditor, tmp_path: Path):  # noqa: ANN201
    with RecipeKnowledgeStore(editor, path=tmp_path / "store") as opened:
        yield opened


# ---------------------------------------------------------------------------- ids and history
def test_ids_are_never_reused_and_a_stale_delete_changes_nothing(store: RecipeKnowledgeStore) -> None:
    prompt = "The capital of the lost island is"
    poseidonia = store.add_edit(prompt, "Poseidonia")
    atlantica = store.add_edit(prompt, "Atlantica")
    store.delete_edit(atlantica.edit_id)
    assert store.get_edit(poseidonia.edit_id).active
    nova = store.add_edit(prompt, "Nova")
    assert nova.edit_id not in (poseidonia.edit_id, atlantica.edit_id)
    with pytest.raises(EditNotFoundError, match="deleted before"):
        store.delete_edit(atlantica.edit_id)  # stale: must not delete Nova nor reactivate Poseidonia
    assert store.get_edit(nova.edit_id).active and not store.get_edit(poseidonia.edit_id).active
    store.clear()
    again = store.add_edit(prompt, "Again")
    assert again.edit_id not in (poseidonia.edit_id, atlantica.edit_id, nova.edit_id)


def test_an_explicit_id_may_be_given_again_after_its_delete(store: RecipeKnowledgeStore) -> None:
    first = store.add_edit("The capital of France is", "Rome", edit_id="france")
    store.delete_edit("france")
    again = store.add_edit("The capital of France is", "Lyon", edit_id="france")  # the caller's choice
    assert again.edit_id == first.edit_id and store.get_edit("france").target_new == "Lyon"


def test_supersession_holds_past_sixteen_deleted_versions(store: RecipeKnowledgeStore) -> None:
    prompt = "The motto of Examplestan is"
    versions = store.add_edits([{"prompt": prompt, "target_new": f"M{i}"} for i in range(18)])
    store.delete_edits([r.edit_id for r in versions[:16]])
    newest = store.add_edit(prompt, "M18")
    active = store.list_edits(where={"prompt": prompt}, limit=None)
    assert [r.edit_id for r in active] == [newest.edit_id]
    assert newest.previous_targets == ["M16", "M17"]


def test_deleting_the_oldest_version_drops_it_from_the_history(store: RecipeKnowledgeStore) -> None:
    prompt = "The mascot of Testville is"
    first, second, third = (store.add_edit(prompt, t) for t in ("Owl", "Fox", "Bear"))
    store.delete_edit(first.edit_id)
    assert store.get_edit(third.edit_id).previous_targets == ["Fox"]
    assert store.get_edit(second.edit_id).previous_targets == []


def test_nfc_and_nfd_spellings_are_one_fact(store: RecipeKnowledgeStore) -> None:
    nfc = unicodedata.normalize("NFC", "The café of Zoë is")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    first = store.add_edit(nfc, "Paris")
    second = store.add_edit(nfd, "Lyon")
    assert store.count() == 1 and second.previous_targets == ["Paris"] and not store.get_edit(first.edit_id).active
    assert second.prompt == nfc  # stored in NFC
    assert store.add_edit("Le bar de " + unicodedata.normalize("NFD", "Zoë") + " est", "x").target_new == "x"


# ---------------------------------------------------------------------------- what the encoder sees
@pytest.mark.parametrize("target", ["😀", "🎉", "x" * 100_000])
def test_targets_the_encoder_cannot_read_are_refused(store: RecipeKnowledgeStore, target: str) -> None:
    with pytest.raises(ValueError, match="cannot read target_new"):
        store.add_edit("My favourite symbol is", target)
    with pytest.raises(ValueError, match="Edit record 1: the knowledge encoder cannot read"):
        store.add_edits([{"prompt": "A is", "target_new": "fine"}, {"prompt": "B is", "target_new": target}])
    assert store.count() == 0  # the whole call wrote nothing
    kept = store.add_edit("My favourite symbol is", "a party popper")
    with pytest.raises(ValueError, match="cannot read target_new"):
        store.update_edit(kept.edit_id, target_new=target)
    assert store.get_edit(kept.edit_id).target_new == "a party popper"


def test_readable_scripts_and_mixed_targets_pass(store: RecipeKnowledgeStore) -> None:
    for target in ("Москва", "東京", "Ł. Kowalski 😀"):
        assert store.add_edit(f"The word for {target} is", target).target_new == target


# ---------------------------------------------------------------------------- paths and modes
def test_a_file_as_path_is_a_clear_error(editor: RecipeEditor, tmp_path: Path) -> None:
    path = tmp_path / "a-file"
    path.write_text("not a store")
    with pytest.raises(StorePathError, match="is a file"):
        RecipeKnowledgeStore(editor, path=path)
    with pytest.raises(StorePathError, match="No store at"):
        RecipeKnowledgeStore(editor, path=tmp_path / "missing", read_only=True)
    assert not (tmp_path / "missing").exists()


def test_an_unwritable_directory_is_a_clear_error(
    editor: RecipeEditor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "locked"
    path.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == path else real_access(p, mode))
    with pytest.raises(StorePathError, match="not writable"):
        RecipeKnowledgeStore(editor, path=path)
    monkeypatch.undo()  # and the same path works once it is writable
    RecipeKnowledgeStore(editor, path=path).close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any directory, so permissions cannot make one unwritable")
def test_a_read_only_directory_by_permissions(editor: RecipeEditor, tmp_path: Path) -> None:
    path = tmp_path / "ro"
    RecipeKnowledgeStore(editor, path=path).close()
    path.chmod(0o555)
    try:
        with pytest.raises(StorePathError, match="not writable"):
            RecipeKnowledgeStore(editor, path=path)
    finally:
        path.chmod(0o755)


def test_read_only_store_reads_and_refuses_writes(editor: RecipeEditor, tmp_path: Path) -> None:
    with RecipeKnowledgeStore(editor, path=tmp_path / "s") as writer:
        record = writer.add_edit("The capital of France is", "Rome")
        reader = RecipeKnowledgeStore(editor, path=tmp_path / "s", read_only=True)
        assert reader.get_edit(record.edit_id) == record and reader.count() == 1
        reader.gate("The capital of France is")
        for write in (
            lambda: reader.add_edit("X is", "y"),
            lambda: reader.add_edits([{"prompt": "X is", "target_new": "y"}]),
            lambda: reader.update_edit(record.edit_id, target_new="Lyon"),
            lambda: reader.delete_edit(record.edit_id),
            reader.clear,
        ):
            with pytest.raises(ReadOnlyStoreError, match="read_only=True"):
                write()
        reader.close()
        assert writer.get_edit(record.edit_id).active
    with pytest.raises(NamespaceNotFoundError, match="cannot create it"):
        RecipeKnowledgeStore(editor, path=tmp_path / "s", namespace="other", read_only=True)


def test_a_namespace_deleted_underneath_is_a_clear_error(editor: RecipeEditor, tmp_path: Path) -> None:
    store = RecipeKnowledgeStore(editor, path=tmp_path / "s", namespace="doomed")
    store.add_edit("The capital of France is", "Rome")
    store._client.delete_collection(store.collection_name)
    with pytest.raises(NamespaceNotFoundError, match="'doomed'.*was deleted"):
        store.count()
    with pytest.raises(NamespaceNotFoundError):
        store.add_edit("The capital of Spain is", "Porto")
    store.close()


# ---------------------------------------------------------------------------- one writer
def test_write_behind_and_plain_store_in_one_process_share_pending_edits(
    editor: RecipeEditor, tmp_path: Path
) -> None:
    behind = RecipeKnowledgeStore(editor, path=tmp_path / "s", write_behind=True)
    plain = RecipeKnowledgeStore(editor, path=tmp_path / "s")
    first = behind.add_edit("Mixed fact is", "one")
    second = plain.add_edit("Mixed fact is", "two")
    assert first.edit_id != second.edit_id and second.previous_targets == ["one"]
    behind.close()
    plain.close()
    with RecipeKnowledgeStore(editor, path=tmp_path / "s") as reopened:
        assert reopened.get_edit(first.edit_id).target_new == "one"
        assert reopened.get_edit(second.edit_id).active and reopened.count() == 1


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from recipe_chain.store_lock import acquire_path_lock

    lock = acquire_path_lock(Path(sys.argv[1]))
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    lock.release()
    print("released", flush=True)
    time.sleep(30)
    """
)


@contextlib.contextmanager
def lock_held_elsewhere(path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """A child process that holds ``path``'s write lock for ``seconds`` (killed on exit)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        yield child
    finally:
        child.kill()
        child.wait()


def test_a_second_writing_process_waits_or_is_refused(editor: RecipeEditor, tmp_path: Path) -> None:
    path = tmp_path / "s"
    RecipeKnowledgeStore(editor, path=path).close()
    with lock_held_elsewhere(path, 3) as child:
        with pytest.raises(StoreBusyError, match=rf"another process \(pid {child.pid}\)"):
            RecipeKnowledgeStore(editor, path=path)
        reader = RecipeKnowledgeStore(editor, path=path, read_only=True)  # readers take no lock
        assert reader.count() == 0
        reader.close()
        with RecipeKnowledgeStore(editor, path=path, lock_timeout=60) as waited:  # returns once the child releases
            waited.add_edit("The capital of France is", "Rome")
        assert (path / LOCK_FILE).is_file()


def test_a_killed_writer_leaves_no_stale_lock(editor: RecipeEditor, tmp_path: Path) -> None:
    path = tmp_path / "s"
    RecipeKnowledgeStore(editor, path=path).close()
    with lock_held_elsewhere(path, 600):
        pass  # leaving kills the holder with SIGKILL: the kernel drops the lock
    with RecipeKnowledgeStore(editor, path=path) as store:
        assert store.add_edit("The capital of France is", "Rome").active


def test_option_errors(editor: RecipeEditor, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        RecipeKnowledgeStore(editor, path=tmp_path / "s", read_only=True, write_behind=True)
    with pytest.raises(ValueError, match="lock_timeout"):
        RecipeKnowledgeStore(editor, path=tmp_path / "s", lock_timeout=-1)
    with pytest.raises(TypeError, match="read_only must be a bool"):
        RecipeKnowledgeStore(editor, path=tmp_path / "s", read_only="yes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the CLI
@pytest.fixture
def cli_models(monkeypatch: pytest.MonkeyPatch) -> EditingModels:
    """The tiny models every CLI command of the test gets."""
    models = shared_models()
    monkeypatch.setattr(store_commands, "load_models", lambda checkpoint=None, **kw: models)
    return models


def test_terminal_safe_escapes_controls_and_bidi() -> None:
    assert terminal_safe("a\x1b[31mb\x07c\u202ed\u2066") == "a\\x1b[31mb\\x07c\\u202ed\\u2066"
    assert terminal_safe("x\ny") == "x\\x0ay" and terminal_safe("x\ny", keep_newlines=True) == "x\ny"
    assert terminal_safe("Zoë 東京") == "Zoë 東京"


def test_cli_escapes_stored_text_and_reports_path_errors(
    cli_models: EditingModels, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    models = cli_models
    path = tmp_path / "store"
    with RecipeKnowledgeStore(models.editor, path=path) as store:
        hostile = store.add_edit("The \x1b]0;pwned\x07 CEO of Acme is", "Wile \u202eE. Coyote")
    for argv in (["list"], ["list", "--all"], ["ask", hostile.prompt, "--max-new-tokens", "2"]):
        assert cli.main(["--store", str(path), *argv]) == 0
        out, err = capsys.readouterr()
        assert "\x1b" not in out + err and "\x07" not in out + err and "\u202e" not in out + err
    assert cli.main(["--store", str(path), "list"]) == 0
    assert "\\x1b]0;pwned\\x07" in capsys.readouterr().out
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert cli.main(["--store", str(a_file), "list"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and "is a file" in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_reads_a_store_another_process_writes(
    cli_models: EditingModels, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    models = cli_models
    path = tmp_path / "store"
    with RecipeKnowledgeStore(models.editor, path=path) as store:
        store.add_edit("The capital of France is", "Rome")
    with lock_held_elsewhere(path, 600):
        assert cli.main(["--store", str(path), "list"]) == 0  # read-only while the other process writes
        assert "1 of 1 active edits" in capsys.readouterr().out
        assert cli.main(["--store", str(path), "edit", "The capital of Spain is", "Porto"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "open for writing by another process" in err
