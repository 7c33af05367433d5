"""Build the cookbook notebooks (``cookbook/*.ipynb``) from their sources in ``cookbook/_src/``.

Each source is a plain Python file in the "percent" format: a line ``# %%`` starts a code
cell, ``# %% [markdown]`` a markdown cell whose lines are comments (``# `` is stripped).
The notebooks are written without outputs and with stable cell ids, so building twice
gives byte-identical files and ``git diff`` shows only real changes.

Usage (from the repository root)::

    .venv/bin/python cookbook/_build_notebooks.py          # (re)write every notebook
    .venv/bin/python cookbook/_build_notebooks.py --check  # exit 1 if a notebook is out of date

Edit the sources, not the ``.ipynb`` files; ``tests/test_cookbook.py`` checks they agree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

__all__ = ["COOKBOOK", "SOURCES", "parse_percent", "build_notebook", "render", "main"]

COOKBOOK = Path(__file__).resolve().parent
SOURCES = COOKBOOK / "_src"

_MARKDOWN_MARK = "# %% [markdown]"
_CODE_MARK = "# %%"


def parse_percent(text: str) -> list[tuple[str, str]]:
    """Split a percent-format source into ``(kind, source)`` cells, kind ``"markdown"`` or ``"code"``.

    Raises:
        ValueError: If text precedes the first cell marker or a cell is empty.
    """
    cells: list[tuple[str, list[str]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.rstrip()
        if stripped == _MARKDOWN_MARK:
            cells.append(("markdown", []))
        elif stripped == _CODE_MARK:
            cells.append(("code", []))
        elif not cells:
            if stripped:
                raise ValueError(f"line {number}: text before the first '# %%' marker")
        else:
            kind, lines = cells[-1]
            if kind == "markdown":
                if stripped and not stripped.startswith("#"):
                    raise ValueError(f"line {number}: a markdown cell line must be a comment: {line!r}")
                lines.append(stripped[2:] if stripped.startswith("# ") else stripped[1:])
            else:
                lines.append(line.rstrip())
    out: list[tuple[str, str]] = []
    for index, (kind, lines) in enumerate(cells):
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if not lines:
            raise ValueError(f"cell {index} ({kind}) is empty")
        out.append((kind, "\n".join(lines)))
    return out


def build_notebook(source: Path) -> nbformat.NotebookNode:
    """The notebook (no outputs, stable cell ids) described by one percent-format source."""
    cells = []
    for index, (kind, text) in enumerate(parse_percent(source.read_text(encoding="utf-8"))):
        cell = new_markdown_cell(text) if kind == "markdown" else new_code_cell(text)
        cell["id"] = f"{source.stem[:2]}-{index:02d}"
        cells.append(cell)
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    return nb


def render(source: Path) -> str:
    """The exact text of the ``.ipynb`` file built from ``source``."""
    return nbformat.writes(build_notebook(source)) + "\n"


def targets() -> dict[Path, Path]:
    """``{source: notebook}`` for every source in ``cookbook/_src``."""
    return {src: COOKBOOK / f"{src.stem}.ipynb" for src in sorted(SOURCES.glob("[0-9][0-9]_*.py"))}


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) every notebook; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Only report notebooks that differ from their source.")
    args = parser.parse_args(argv)
    stale = []
    for src, notebook in targets().items():
        text = render(src)
        current = notebook.read_text(encoding="utf-8") if notebook.is_file() else None
        if current == text:
            continue
        if args.check:
            stale.append(notebook.name)
        else:
            notebook.write_text(text, encoding="utf-8")
            sys.stderr.write(f"wrote {notebook.relative_to(COOKBOOK.parent)}\n")
    if stale:
        sys.stderr.write(f"out of date (run cookbook/_build_notebooks.py): {', '.join(stale)}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
