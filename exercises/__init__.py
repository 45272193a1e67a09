"""Graded exercises from the lessons: `python -m exercises --help` (make, grade, selfcheck), and
`check` for a notebook's own implementation.

An exercise is a lesson function whose tests are marked `@pytest.mark.exercise(name)`; the
catalog (catalog.py) gives its points and hint, mistakes.py the bugs its tests must catch.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from pathlib import Path

from .catalog import BY_NAME, EXERCISES, Exercise

__all__ = ["BY_NAME", "EXERCISES", "Exercise", "check"]


def check(name: str, fn) -> str:
    """Run exercise `name`'s tests with the lesson's function replaced by `fn` (e.g. the one a
    notebook cell defines) -> "k/n tests passed"; AssertionError with the failures if any fails.
    In a student's copy, where the lesson's function is blank, a passing `fn` then stays in the
    lesson for the rest of the session, so that the notebook's later cells run on it."""
    import pytest
    import torch

    from . import grading

    owner, attr = grading.owner_of(name)
    before = owner.__dict__[attr]
    with tempfile.TemporaryDirectory(prefix="check-") as tmp:
        report = Path(tmp) / "report.json"
        args = [
            "-q",
            "--no-header",
            "-p",
            "no:cacheprovider",
            "--exercise",
            name,
            "--exercise-report",
            str(report),
        ]
        env, threads = dict(os.environ), torch.get_num_threads()  # the tests' conftest sets both
        setattr(owner, attr, fn)
        try:
            pytest.main(args + [str(grading.ROOT / t) for t in grading.test_files([name])])
        finally:
            setattr(owner, attr, before)
            os.environ.clear()
            os.environ.update(env)
            torch.set_num_threads(threads)
        row = grading.score(json.loads(report.read_text()).get("", {}), [name])[0]
    if row.passed < row.total:
        raise AssertionError(f"{name}: {row.output}")
    if f"exercise {name}:" in inspect.getsource(before):  # a student's copy: the lesson's is blank
        setattr(owner, attr, fn)
        return f"{name}: {row.passed}/{row.total} tests passed; yours now stands in for the lesson's"
    return f"{name}: {row.passed}/{row.total} tests passed"
