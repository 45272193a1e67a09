"""The exercises (python -m exercises): blanking keeps what a student needs, the grader gives the
reference full points and a blank zero, every plausible mistake loses points, and the notebooks'
exercise cells are checked by the same tests."""

import ast
import inspect
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest

from exercises import catalog, grading, handout, selfcheck, source
from exercises.__main__ import main as exercises_main

ROOT = Path(__file__).resolve().parent.parent
WALKTHROUGHS = ["01_vq", "02_rq", "03_vqgan", "04_rq_transformer", "05_vq_diffusion"]
# in a student's copy (made by `make`) the lessons' answers are blank: no reference to grade
needs_answers = pytest.mark.skipif(
    (ROOT / grading.MANIFEST).exists(), reason="a student's copy: the reference answers are blanked"
)
needs_mistakes = pytest.mark.skipif(
    not (ROOT / "exercises" / "mistakes.py").exists(), reason="a student's copy: no exercises/mistakes.py"
)


def run(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


# --- the catalog and the markers ---


def marked_names() -> set[str]:
    """Every name in an @pytest.mark.exercise(...) of the test files, read from their source."""
    names = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "pytest.mark.exercise":
                names.add(node.args[0].value)
    return names


def test_at_least_15_exercises_across_the_five_lessons_each_with_tests():
    names = [e.name for e in catalog.EXERCISES]
    assert len(names) >= 15 and len(set(names)) == len(names)
    assert {e.lesson for e in catalog.EXERCISES} == set(WALKTHROUGHS)
    assert marked_names() == set(names)  # every exercise has tests, every marker a catalog entry
    assert all(isinstance(e.points, int) and e.points > 0 and "\n" not in e.hint for e in catalog.EXERCISES)


def test_no_exercise_test_is_in_the_slow_tier():
    """The grader selects exercise tests by name (--exercise) whatever the tier, and a student's
    `python -m pytest` must run them all: no test marked exercise is marked slow, by decorator or
    by its file's pytestmark."""
    slow, graded = [], 0
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        file_slow = any(
            "mark.slow" in ast.unparse(n) for n in tree.body if "pytestmark" in ast.unparse(n)[:12]
        )
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
            marks = [ast.unparse(d) for d in fn.decorator_list]
            if any(m.startswith("pytest.mark.exercise") for m in marks):
                graded += 1
                slow += [fn.name] if file_slow or "pytest.mark.slow" in marks else []
    assert graded >= 40 and slow == []


@needs_mistakes
def test_every_exercise_has_a_plausible_mistake():
    mistakes = selfcheck.mistakes()
    assert all(mistakes.get(e.name) for e in catalog.EXERCISES) and set(mistakes) <= set(catalog.BY_NAME)


def test_the_marker_is_registered_and_markers_are_strict():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in config["addopts"]
    assert any(m.startswith("exercise(name)") for m in config["markers"])


# --- blanking ---

TOY = '''import torch


class Cache:
    def append(self, k):
        """Store k."""
        self.k = k  # no equation here
        return k


@torch.no_grad()
def residual(
    z, book, depth: int = 2
):
    """RQ Eq. 3: the docstring stays.

    Second paragraph stays too.
    """
    r = z.clone()  # r_0 = z
    # a note on speed, dropped
    for _ in range(depth):
        k = (r @ book.t()).argmax(-1)  # k_d = Q(r_{d-1}) RQ Eq. 4
        # the residual update (RQ Eq. 4):
        # r_d = r_{d-1} - e(k_d), in place
        r -= book[k]
    return r


def after():
    return 1
'''

TOY_BLANKED = '''@torch.no_grad()
def residual(
    z, book, depth: int = 2
):
    """RQ Eq. 3: the docstring stays.

    Second paragraph stays too.
    """
    # r_0 = z
    # k_d = Q(r_{d-1}) RQ Eq. 4
    # the residual update (RQ Eq. 4):
    # r_d = r_{d-1} - e(k_d), in place
    raise NotImplementedError('exercise toy.residual: loop')
'''


def test_blanking_keeps_decorators_signature_docstring_and_equation_comments_only():
    out = source.blank(TOY, "residual", "exercise toy.residual: loop")
    assert source.function_source(out, "residual") == TOY_BLANKED
    assert out.startswith(TOY[: TOY.index("@torch.no_grad()")]) and out.endswith(
        "def after():\n    return 1\n"
    )
    method = source.blank(TOY, "Cache.append", "exercise toy.Cache.append: store")
    assert source.function_source(method, "Cache.append") == (
        'def append(self, k):\n    """Store k."""\n    raise NotImplementedError(\'exercise toy.Cache.append: store\')\n'
    )


@pytest.mark.parametrize(
    "qualname, why", [("nope", "no function nope"), ("Cache", "is a class"), ("after", "no docstring")]
)
def test_blanking_something_that_is_not_a_documented_function_says_why(qualname, why):
    with pytest.raises(LookupError, match=why):
        source.blank(TOY, qualname, "x")


def test_every_exercise_blanks_to_a_function_that_raises_its_name_and_hint():
    for e in catalog.EXERCISES:
        fn = grading.compile_function(e.name, selfcheck.blanked_source(e.name))
        args = [None for p in inspect.signature(fn).parameters.values() if p.default is p.empty]
        with pytest.raises(NotImplementedError, match=f"^{re.escape(handout.message(e.name))}$"):
            fn(*args)


# --- the command line ---


@pytest.mark.parametrize(
    "argv, message",
    [
        (["make", "01_vq.nope", "--out", "x"], "unknown exercise '01_vq.nope'"),
        (["make", "--out", "x"], "name at least one exercise, a --lesson or --all"),
        (["make", "--all", "--out", str(ROOT / "tests" / "s")], "lies inside the repository"),
        (["grade", str(ROOT / "docs")], "no lesson file"),
        (["grade", str(ROOT), "--json", str(ROOT / "no" / "r.json")], "no folder .*no to write it in"),
    ],
)
def test_command_line_mistakes_are_one_line_errors(argv, message):
    with pytest.raises(grading.UserError, match=message):
        exercises_main(argv)


def test_make_refuses_a_folder_that_is_not_empty_and_grade_a_broken_manifest(tmp_path):
    (tmp_path / "old.txt").write_text("keep me")
    with pytest.raises(grading.UserError, match="exists and is not empty"):
        handout.make(["01_vq.vq_loss"], tmp_path)
    assert (tmp_path / "old.txt").read_text() == "keep me"
    (tmp_path / grading.MANIFEST).write_text('{"exercises": ["01_vq.nope"]}')
    with pytest.raises(grading.UserError, match=r"unknown exercise 01_vq\.nope"):
        grading.handed_out(tmp_path)


@pytest.mark.slow  # pytest or python in processes of their own
def test_a_command_line_error_exits_2_with_one_line(tmp_path):
    r = run("-m", "exercises", "make", "01_vq.nope", "--out", str(tmp_path / "s"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: unknown exercise '01_vq.nope'; `python -m exercises list` shows them"
    ]
    assert not (tmp_path / "s").exists()


# --- the grader can fail (issue: reference full, blank zero and nothing else lost, mistakes lose) ---


@pytest.mark.slow  # pytest or python in processes of their own
@needs_answers
@needs_mistakes
def test_every_exercise_scores_full_as_written_zero_when_blanked_and_less_for_each_mistake():
    checks = selfcheck.run()
    for c in checks:
        assert c.reference == catalog.BY_NAME[c.name].points, c.name
        assert c.blanked == 0 and c.others_full, c.name
        assert c.mistakes and all(p < c.reference for _, p in c.mistakes), (c.name, c.mistakes)
        assert not c.problems
    assert [c.name for c in checks] == [e.name for e in catalog.EXERCISES]


@pytest.mark.slow  # pytest or python in processes of their own
def test_make_all_then_grade_scores_zero_everywhere_in_gradescope_format(tmp_path):
    student = tmp_path / "student"
    r = run("-m", "exercises", "make", "--all", "--out", str(student))
    assert r.returncode == 0, r.stderr
    assert json.loads((student / grading.MANIFEST).read_text())["exercises"] == [
        e.name for e in catalog.EXERCISES
    ]
    for e in catalog.EXERCISES:  # blanked in the lesson file, the rest of the file untouched
        text = (student / f"{e.lesson}.py").read_text()
        assert (
            f"raise NotImplementedError('exercise {e.name}:" in text
            or f'NotImplementedError("exercise {e.name}:' in text
        )
    assert not (student / "exercises" / "mistakes.py").exists()  # near-misses of every answer
    r = run("-m", "pytest", "--collect-only", "-q", "tests/test_exercises.py", cwd=student)
    assert r.returncode == 0 and "ERROR" not in r.stdout, r.stdout[-2000:]  # the copy's suite loads
    r = run("-m", "exercises", "selfcheck", cwd=student)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "mistakes.py" in r.stderr, r.stderr
    cells = [c for w in WALKTHROUGHS for c in nbformat.read(student / "notebooks" / f"{w}.ipynb", 4).cells]
    blanked = [c for c in cells if c.metadata.get("exercise")]
    assert len(blanked) >= 10 and all(f"exercise {c.metadata.exercise}:" in c.source for c in blanked)

    results = tmp_path / "results.json"
    r = run("-m", "exercises", "grade", str(student), "--json", str(results))
    assert r.returncode == 0, r.stderr
    rows = [
        line.split()
        for line in r.stdout.splitlines()
        if line.split()[:1] and line.split()[0] in catalog.BY_NAME
    ]
    assert [row[0] for row in rows] == [e.name for e in catalog.EXERCISES]
    assert all(row[1].startswith("0/") and row[2].startswith("0/") for row in rows)
    report = json.loads(results.read_text())
    assert report["score"] == 0 and len(report["tests"]) == len(catalog.EXERCISES)
    for test, e in zip(report["tests"], catalog.EXERCISES):
        assert test["name"] == e.name and test["score"] == 0 and test["max_score"] == e.points
        assert f"NotImplementedError: exercise {e.name}:" in test["output"]

    # the rest of the student's suite: a test that needs a blanked function is skipped, saying which
    r = run(
        "-m",
        "pytest",
        "-q",
        "-rs",
        "tests/test_01_vq.py",
        "-k",
        "quantizer_outputs_codebook_rows",
        cwd=student,
    )
    assert r.returncode == 0 and "1 skipped" in r.stdout, r.stdout
    assert "needs exercise 01_vq.nearest_code, not implemented in this copy" in r.stdout


@pytest.mark.slow  # pytest or python in processes of their own
def test_check_runs_an_exercises_tests_on_a_notebooks_function():
    script = """
import exercises, torch
print(exercises.check("03_vqgan.hinge_d_loss", lambda r, f: 0.5 * (torch.relu(1 - r).mean() + torch.relu(1 + f).mean())))
try:
    exercises.check("03_vqgan.hinge_d_loss", lambda r, f: torch.relu(1 - r).mean() + torch.relu(1 + f).mean())
except AssertionError as e:
    print("caught:", str(e).splitlines()[:2])
"""
    r = run("-c", script)
    assert r.returncode == 0, r.stderr
    assert "03_vqgan.hinge_d_loss: 2/2 tests passed" in r.stdout
    assert "caught: ['03_vqgan.hinge_d_loss: 0/2 tests passed'" in r.stdout  # no 1/2: both tests fail


# --- notebooks that teach ---


@pytest.mark.parametrize("name", WALKTHROUGHS)
def test_each_walkthrough_has_checked_exercises_loss_curves_and_questions(name):
    cells = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", 4).cells
    exercise_cells = [i for i, c in enumerate(cells) if c.metadata.get("exercise")]
    assert len(exercise_cells) >= 2
    for i in exercise_cells:
        ex = cells[i].metadata.exercise
        assert ex in catalog.BY_NAME and cells[i - 1].cell_type == "markdown"  # explained first
        assert f'exercises.check("{ex}", ' in cells[i + 1].source  # then checked by its tests
        source.blank(cells[i].source, ex.rsplit(".", 1)[-1], "x")  # make can blank it
    assert any("common.plot_curves(" in c.source for c in cells)
    assert cells[-1].cell_type == "markdown" and cells[-1].source.startswith("## Questions to think about")


@pytest.mark.slow  # pytest or python in processes of their own
@needs_answers
def test_grading_takes_only_the_lesson_files_and_a_missing_one_scores_zero(tmp_path):
    (tmp_path / "01_vq.py").write_text((ROOT / "01_vq.py").read_text())  # the reference answer
    (tmp_path / "tests").mkdir()  # a student's own tests are never run
    (tmp_path / "tests" / "test_01_vq.py").write_text("def test_nothing():\n    assert False\n")
    rows, _ = grading.grade(tmp_path, ["01_vq.straight_through", "02_rq.rq_commitment_loss"])
    assert (rows[0].passed, rows[0].total, rows[0].points) == (
        2,
        2,
        catalog.BY_NAME["01_vq.straight_through"].points,
    )
    assert rows[1].points == 0 and rows[1].output == f"no 02_rq.py in {tmp_path}"


def test_the_students_requirements_include_jupyter():
    requirements = (ROOT / "requirements-dev.txt").read_text()
    assert "jupyterlab" in requirements and "-r requirements.txt" in requirements


FORGERIES = {  # what a student's lesson file could add to rewrite its own grade
    "atexit rewrites the outcomes": (
        "import atexit, sys\n"
        "def _forge():\n"
        "    for flag in ('--exercise-report', '--exercise-stream'):\n"
        "        if flag in sys.argv:\n"
        "            path = sys.argv[sys.argv.index(flag) + 1]\n"
        "            text = open(path).read().replace('\"failed\"', '\"passed\"')\n"
        "            open(path, 'w').write(text)\n"
        "atexit.register(_forge)\n"
    ),
    "sys.exit(0) at import": "import sys\nsys.exit(0)\n",
    "os._exit(0) at import": "import os\nos._exit(0)\n",
    "pytest's runner patched": "import _pytest.python\n_pytest.python.Function.runtest = lambda self: None\n",
}


@pytest.mark.slow  # pytest or python in processes of their own
@needs_answers
@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_lesson_file_cannot_rewrite_its_own_grade(tmp_path, forgery):
    """01_vq.straight_through blanked (its body only raises) plus a forgery: still 0 points."""
    name = "01_vq.straight_through"
    text = source.blank((ROOT / "01_vq.py").read_text(), "straight_through", handout.message(name))
    (tmp_path / "01_vq.py").write_text(text + "\n" + FORGERIES[forgery])
    (row,) = grading.grade(tmp_path, [name])[0]
    assert (row.passed, row.total, row.points) == (0, 2, 0), row.output


@pytest.mark.slow  # pytest or python in processes of their own
@needs_answers
def test_a_loop_that_never_ends_fails_its_own_tests_only_and_an_empty_manifest_is_one_line(tmp_path):
    text = (ROOT / "01_vq.py").read_text()
    endless = "def straight_through(z_e, z_q):\n    while True:\n        pass\n"
    (tmp_path / "01_vq.py").write_text(text + "\n\n" + endless)  # the later def replaces the answer
    rows, seconds = grading.grade(tmp_path, ["01_vq.straight_through", "01_vq.vq_loss"], per_test=3)
    loop, fine = rows
    assert (loop.passed, loop.points) == (0, 0) and "took longer than 3 s" in loop.output
    assert fine.points == catalog.BY_NAME["01_vq.vq_loss"].points and seconds < 600
    (tmp_path / grading.MANIFEST).write_text('{"exercises": []}')
    with pytest.raises(grading.UserError, match="hands out no exercise"):
        grading.handed_out(tmp_path)
