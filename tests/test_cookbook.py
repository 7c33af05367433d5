"""The cookbook notebooks: committed clean and in sync with their sources; executed with the CI budget.

The fast tests check the committed ``cookbook/*.ipynb`` files (no outputs, built from
``cookbook/_src`` by ``cookbook/_build_notebooks.py``, a first markdown cell that says
what the notebook teaches and how long it takes). The ``integration`` tests execute each
notebook with nbclient in a kernel running *this* interpreter, with
``RECIPE_COOKBOOK_BUDGET=ci``, from ``cookbook/`` (so ``../shared/data`` resolves), with
``TMPDIR`` pointed at a fresh directory; afterwards the notebook must have removed
everything it wrote there, left no process running from it, and written nothing into
``cookbook/``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
COOKBOOK = ROOT / "cookbook"
NOTEBOOKS = (
    "01_quickstart.ipynb",
    "02_recipe_vs_text_rag.ipynb",
    "03_lifelong_editing.ipynb",
    "04_chroma_server.ipynb",
    "05_train_your_own.ipynb",
)
BUDGET_ENV = "RECIPE_COOKBOOK_BUDGET"
CELL_TIMEOUT_S = 900  # one cell (training, a lifelong run) on a loaded 2-core machine
NOTEBOOK_TIMEOUT_S = 1800  # the whole notebook, kernel start included
KERNEL_NAME = "recipe-chain-cookbook"


def _builder():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("cookbook_build", COOKBOOK / "_build_notebooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------- fast checks


def test_every_source_has_its_committed_notebook() -> None:
    built = sorted(notebook.name for notebook in _builder().targets().values())
    assert built == sorted(NOTEBOOKS)
    assert all((COOKBOOK / name).is_file() for name in NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_built_from_its_source(name: str) -> None:
    builder = _builder()
    source = builder.SOURCES / name.replace(".ipynb", ".py")
    assert (COOKBOOK / name).read_text(encoding="utf-8") == builder.render(source), (
        f"{name} differs from {source.name}; run: .venv/bin/python cookbook/_build_notebooks.py"
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean_and_introduced(name: str) -> None:
    nb = nbformat.read(COOKBOOK / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: committed with outputs"
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    text = " ".join(first.source.split())
    assert "What you will learn" in text
    assert "How long it takes on a CPU" in text and "full budget" in text and "CI budget" in text
    assert BUDGET_ENV in text
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert f'os.environ.get("{BUDGET_ENV}", "full")' in code, f"{name} must read {BUDGET_ENV}"
    assert "tempfile.mkdtemp(" in code and "shutil.rmtree(WORKDIR" in code, f"{name} must clean up its scratch dir"


def test_parse_percent_splits_cells_and_rejects_stray_text() -> None:
    builder = _builder()
    cells = builder.parse_percent("# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\n\n# %%\nprint(x)\n")
    assert cells == [("markdown", "# Title\n\ntext"), ("code", "x = 1"), ("code", "print(x)")]
    with pytest.raises(ValueError, match="before the first"):
        builder.parse_percent("x = 1\n# %%\ny = 2\n")
    with pytest.raises(ValueError, match="must be a comment"):
        builder.parse_percent("# %% [markdown]\nnot a comment\n")
    with pytest.raises(ValueError, match="empty"):
        builder.parse_percent("# %%\n\n# %%\nx = 1\n")


# ---------------------------------------------------------------------------------- execution


@pytest.fixture
def cookbook_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kernelspec for this interpreter, the CI budget and a private TMPDIR; returns the TMPDIR."""
    from ipykernel.kernelspec import install

    prefix = tmp_path / "jupyter-prefix"
    install(prefix=str(prefix), kernel_name=KERNEL_NAME, display_name="recipe-chain cookbook")
    from jupyter_client.kernelspec import KernelSpecManager

    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    assert Path(spec.argv[0]).resolve() == Path(sys.executable).resolve(), spec.argv
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setenv(BUDGET_ENV, "ci")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    return scratch


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (Linux /proc; empty elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(entry.name) != os.getpid():
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def _cookbook_files() -> set[str]:
    return {str(p.relative_to(COOKBOOK)) for p in COOKBOOK.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.integration
@pytest.mark.timeout(NOTEBOOK_TIMEOUT_S)
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.server) if n.startswith("04_") else n for n in NOTEBOOKS],
)
def test_notebook_executes_with_the_ci_budget(
    name: str, cookbook_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(COOKBOOK / name, as_version=4)
    before = _cookbook_files()
    client = NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": str(COOKBOOK)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        elapsed = time.perf_counter() - start
        nbformat.write(nb, tmp_path / f"executed-{name}")  # for reading a failure
        with capsys.disabled():
            sys.stdout.write(f"\n[cookbook] {name}: {elapsed:.0f} s with the CI budget\n")

    outputs = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert "budget: ci" in outputs, "the notebook did not pick up the CI budget"
    leftovers = sorted(p.name for p in cookbook_env.iterdir() if p.name.startswith("recipe-cookbook-"))
    assert not leftovers, f"{name} left its scratch directory behind: {leftovers}"
    assert not _processes_mentioning(str(cookbook_env)), f"{name} left a process running"
    assert _cookbook_files() == before, f"{name} wrote into cookbook/: {sorted(_cookbook_files() ^ before)}"
