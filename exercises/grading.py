"""Grading: run the exercises' tests on a student's lesson files and turn outcomes into points.

The tests, the helpers and this package come from the grader's own repository; from the
student's folder only the five lesson files are taken, so that editing a test cannot raise a grade.
The verdict is this process's, not the test process's (where the student's code runs): the tests
to expect come from collecting the grader's own copy, and each outcome is read from a signed
stream written as each test ends (plugin.signed_outcomes); a test with no signed outcome scores 0.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError

from .catalog import BY_NAME, EXERCISES

ROOT = Path(__file__).resolve().parent.parent  # the grader's repository
LESSONS = ("01_vq", "02_rq", "03_vqgan", "04_rq_transformer", "05_vq_diffusion")
LESSON_FILES = [f"{stem}.py" for stem in LESSONS]
TEST_FILES = [f"tests/test_{stem}.py" for stem in LESSONS]  # where the exercise tests are
MANIFEST = "exercises.json"  # written by `make` into the student's copy: the exercises handed out
SKIP = (".git", "runs", "__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".hypothesis")


def owner_of(name: str):
    """Where exercise `name` lives: "02_rq.residual_quantize" -> (the 02_rq module,
    "residual_quantize"); for a method, "04_rq_transformer.KVCache.append" -> (KVCache, "append")."""
    import common

    owner = common.lesson(BY_NAME[name].lesson)
    *path, attr = BY_NAME[name].qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, attr


def compile_function(name: str, source: str):
    """The function that `source` (one def, with its decorators) defines, compiled in the globals
    of the lesson that `name` belongs to, as if it stood in that file."""
    import common

    namespace: dict = {}
    exec(compile(source, f"<{name}>", "exec"), vars(common.lesson(BY_NAME[name].lesson)), namespace)
    return namespace[BY_NAME[name].qualname.rsplit(".", 1)[-1]]


def copy_tree(src: Path, dst: Path, skip: tuple[str, ...] = SKIP) -> None:
    """The repository at src copied to dst without its history, runs and caches."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*skip), dirs_exist_ok=True)


def test_files(names: list[str], root: Path = ROOT) -> list[str]:
    """The lesson test files that hold a test of one of `names` (found by their markers)."""
    return [f for f in TEST_FILES if any(f'exercise("{n}")' in (root / f).read_text() for n in names)]


def pytest_run(folder: Path, names: list[str], extra: list[str], timeout: float, **kw):
    """pytest on the tests of `names` in `folder` (a copy of the repository), with `extra` options."""
    cmd = [sys.executable, "-m", "pytest", "-q", "--tb=short", "-p", "no:cacheprovider", *extra]
    cmd += [arg for n in names for arg in ("--exercise", n)] + test_files(names, folder)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HYPOTHESIS_PROFILE": "grading"}
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def run_tests(folder: Path, names: list[str], extra: list[str] = (), timeout: float = 1800) -> dict:
    """Run the tests of `names` in `folder` (a copy of the repository) -> {variant: {nodeid: row}},
    as the test process reports them at its end (for trusted code: list and selfcheck)."""
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        report = Path(tmp) / "report.json"
        done = pytest_run(folder, names, ["--exercise-report", str(report), *extra], timeout)
        if not report.exists():
            raise UserError(
                f"the tests did not run (exit {done.returncode}): {done.stdout[-400:]}{done.stderr[-400:]}"
            )
        return json.loads(report.read_text())


def run_graded(folder: Path, names: list[str], timeout: float = 1800, per_test: float = 120) -> dict:
    """Run the tests of `names` on the student's code in `folder` -> {nodeid: row} for every test
    that collecting the grader's own repository finds; each outcome comes signed from the test
    process as the test ends (the first one counts), and a test without one has failed. A test's
    call may take `per_test` seconds (then it fails); the whole run `timeout` (then the tests that
    have not reported fail, and the others keep their outcome)."""
    expected = run_tests(ROOT, names, ["--collect-only"]).get("", {})
    key = secrets.token_bytes(32)
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        stream = Path(tmp) / "outcomes.jsonl"
        stream.touch()
        read_key, write_key = os.pipe()  # the key reaches the plugin before any lesson is imported
        os.write(write_key, key)
        os.close(write_key)
        try:
            signed = ["--exercise-stream", str(stream), "--exercise-key-fd", str(read_key)]
            signed += ["--exercise-seconds", str(per_test)]
            done = pytest_run(folder, names, signed, timeout, pass_fds=(read_key,))
            ended = f"the test process ended before it reported this test (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            ended = f"grading stopped after {timeout:g} s before this test reported"
        finally:
            os.close(read_key)
        lines = stream.read_text(errors="replace").splitlines()
    rows = {}
    for line in lines:
        try:
            got = json.loads(line)
            signed = f"{got['nodeid']}\t{got['outcome']}".encode()
            genuine = hmac.compare_digest(got["mac"], hmac.new(key, signed, "sha256").hexdigest())
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if genuine and got["nodeid"] in expected and got["nodeid"] not in rows:
            name = got["nodeid"].rsplit("::", 1)[-1]
            rows[got["nodeid"]] = {
                **expected[got["nodeid"]],
                "outcome": got["outcome"],
                "output": f"{name}: {got['output']}",
            }
    for nodeid, row in expected.items():
        rows.setdefault(
            nodeid, {**row, "outcome": "failed", "output": f"{nodeid.rsplit('::', 1)[-1]}: {ended}"}
        )
    return rows


@dataclass
class Score:
    name: str
    passed: int
    total: int
    points: float
    max_points: int
    output: str


def score(results: dict, names: list[str]) -> list[Score]:
    """Points per exercise: its points times the share of its tests that passed."""
    rows = []
    for name in names:
        mine = [r for r in results.values() if name in r["exercises"]]
        passed = sum(r["outcome"] == "passed" for r in mine)
        points = round(BY_NAME[name].points * passed / len(mine), 2) if mine else 0.0
        failures = [r["output"] for r in mine if r["outcome"] != "passed"]
        more = [f"... and {len(failures) - 5} more"] if len(failures) > 5 else []
        output = "\n".join([f"{passed}/{len(mine)} tests passed", *failures[:5], *more])
        rows.append(Score(name, passed, len(mine), points, BY_NAME[name].points, output))
    return rows


def handed_out(folder: Path) -> list[str]:
    """The exercises that `make` handed out in folder (its manifest), else every exercise."""
    manifest = folder / MANIFEST
    if not manifest.exists():
        return [e.name for e in EXERCISES]
    try:
        names = json.loads(manifest.read_text())["exercises"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{manifest}: not a manifest written by `python -m exercises make` ({e})") from e
    if not names:
        raise UserError(f"{manifest}: hands out no exercise; write it again with `python -m exercises make`")
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise UserError(f"{manifest}: unknown exercise {unknown[0]}; see `python -m exercises list`")
    return names


def grade(folder: Path, names: list[str], per_test: float = 120) -> tuple[list[Score], float]:
    """The student's lesson files from `folder` in a fresh copy of this repository, graded
    -> (one Score per exercise, seconds the tests took). An exercise whose lesson file the
    folder lacks scores 0 (the reference's file must not stand in for a missing answer)."""
    found = [f for f in LESSON_FILES if (folder / f).is_file()]
    if not found:
        raise UserError(f"{folder}: no lesson file ({', '.join(LESSON_FILES)}) to grade")
    with tempfile.TemporaryDirectory(prefix="grading-") as tmp:
        work = Path(tmp) / "repo"
        copy_tree(ROOT, work, (*SKIP, "notebooks", "assets", "docs", "benchmarks"))
        for f in found:
            shutil.copyfile(folder / f, work / f)
        start = time.perf_counter()
        results = run_graded(work, names, per_test=per_test)
        seconds = time.perf_counter() - start
    rows = score(results, names)
    for r in rows:
        if f"{BY_NAME[r.name].lesson}.py" not in found:
            r.passed, r.points, r.output = 0, 0.0, f"no {BY_NAME[r.name].lesson}.py in {folder}"
    return rows, seconds


def gradescope(rows: list[Score], seconds: float) -> dict:
    """The Gradescope autograder's results.json: one entry per exercise, and the total."""
    tests = [
        {
            "name": r.name,
            "score": r.points,
            "max_score": r.max_points,
            "output": r.output,
            "visibility": "visible",
        }
        for r in rows
    ]
    return {
        "score": round(sum(r.points for r in rows), 2),
        "execution_time": round(seconds, 1),
        "tests": tests,
    }


def table(rows: list[Score]) -> str:
    width = max(len(r.name) for r in rows)
    lines = [f"{'exercise':<{width}}  tests  points", f"{'-' * width}  -----  ------"]
    lines += [f"{r.name:<{width}}  {r.passed:>2}/{r.total:<2}  {r.points:>5g}/{r.max_points}" for r in rows]
    total, most = sum(r.points for r in rows), sum(r.max_points for r in rows)
    return "\n".join([*lines, f"{'total':<{width}}         {total:>5g}/{most}"])
