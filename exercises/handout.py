"""Making the student version: a copy of the repository with the chosen functions blanked, in
the lesson files and in the notebooks' exercise cells."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from common.errors import UserError

from . import source
from .catalog import BY_NAME
from .grading import MANIFEST, ROOT, SKIP, copy_tree


def message(name: str) -> str:
    return f"exercise {name}: {BY_NAME[name].hint}"


def blank_lessons(folder: Path, names: list[str]) -> None:
    """Blank each exercise's function in its lesson file inside folder."""
    for name in names:
        e = BY_NAME[name]
        path = folder / f"{e.lesson}.py"
        path.write_text(source.blank(path.read_text(), e.qualname, message(name)))


def blank_notebooks(folder: Path, names: list[str]) -> int:
    """Blank the notebook cells that implement a chosen exercise (cell metadata "exercise": name)
    -> how many cells were blanked."""
    blanked = 0
    for path in sorted((folder / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cells = [c for c in nb.cells if c.get("metadata", {}).get("exercise") in names]
        for cell in cells:
            name = cell.metadata["exercise"]
            cell.source = source.blank(cell.source, BY_NAME[name].qualname.rsplit(".", 1)[-1], message(name))
        if cells:
            nbformat.write(nb, path)
            blanked += len(cells)
    return blanked


def make(names: list[str], out: Path) -> int:
    """Write the student version of this repository with `names` blanked into `out` (without
    exercises/mistakes.py) -> the number of notebook cells blanked. `out` must not exist yet or
    be empty: nothing is overwritten."""
    out = out.resolve()
    if out == ROOT or ROOT in out.parents:
        raise UserError(f"--out {out} lies inside the repository it copies; choose a folder outside it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not empty; choose a new folder")
    copy_tree(ROOT, out, (*SKIP, "mistakes.py"))  # near-misses of every answer: the grader's only
    blank_lessons(out, names)
    cells = blank_notebooks(out, names)
    (out / MANIFEST).write_text(json.dumps({"exercises": names}, indent=1) + "\n")
    return cells
