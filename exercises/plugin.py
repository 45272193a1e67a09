"""The pytest side of the exercises (tests/conftest.py loads it).

- `@pytest.mark.exercise("02_rq.residual_quantize")` says which exercise a test grades;
  `--exercise NAME` (repeatable) runs only those exercises' tests.
- `--exercise-report FILE` writes every exercise test's outcome and failure text as JSON: what
  `python -m exercises grade` turns into points.
- In a student's copy, a test that is not an exercise's own but reaches a blanked function (its
  NotImplementedError names the exercise) is skipped with that reason instead of failing, so the
  rest of the suite still says something.
- `--exercise-variants FILE` (used by `python -m exercises selfcheck`): run the selected tests once
  per variant, each with some lesson functions replaced by other source (a blanked or a wrong
  implementation), in one process.
- `--exercise-stream FILE --exercise-key-fd FD` (used by `python -m exercises grade`): the verdict
  for a student's code, which runs in this process. Each test's outcome is appended to FILE as it
  ends, signed with a key read from FD before any lesson is imported; the grader (the parent
  process) keeps the first signed outcome of each test. A test whose outcome is never written
  (the process exited early) scores nothing, and so does every test after the student's code
  replaced a function or class the verdict rests on (pytest's runner and reports, torch's
  comparisons, builtins: `GUARDED`). Each test's call has a time limit, `--exercise-seconds`
  (a student's loop that never ends fails that test with a TimeoutError; the others are graded).
  Code that reads this process's memory to find the key is out of scope: run grading in a
  container (docs/teaching.md).
"""

from __future__ import annotations

import _hashlib
import importlib
import inspect
import json
import os
import re
import signal
import sys
import types
from contextlib import contextmanager, nullcontext

import pytest

MARK = "exercise"
UNFINISHED = re.compile(r"NotImplementedError: exercise (\S+):")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def exercises_of(item) -> set[str]:
    return {m.args[0] for m in item.iter_markers(MARK)}


def pytest_addoption(parser):
    group = parser.getgroup("exercises", "graded exercises (python -m exercises)")
    group.addoption(
        "--exercise", action="append", default=[], metavar="NAME", help="run only these exercises' tests"
    )
    group.addoption(
        "--exercise-report", metavar="FILE", help="write each exercise test's outcome to FILE (JSON)"
    )
    group.addoption(
        "--exercise-variants", metavar="FILE", help="run the tests once per variant in FILE (JSON)"
    )
    group.addoption("--exercise-stream", metavar="FILE", help="grading: append each signed outcome to FILE")
    group.addoption("--exercise-key-fd", type=int, metavar="FD", help="grading: read the signing key from FD")
    group.addoption(
        "--exercise-seconds", type=float, default=120, help="grading: time limit of each test's call"
    )


def pytest_configure(config):
    config._exercise_results = {}  # variant -> nodeid -> {"exercises", "outcome", "output"}
    if config.getoption("--exercise-stream"):  # before collection imports a lesson
        config.pluginmanager.register(signed_outcomes(config), "exercise-stream")


GUARDED = (  # modules whose functions and classes the verdict rests on
    "builtins", "math", "json", "os", "_pytest.runner", "_pytest.reports", "_pytest.python",
    "_pytest.python_api", "_pytest.raises", "_pytest.main", "_pytest.outcomes", "_pytest.fixtures",
    "_pytest.skipping", "_pytest.nodes", "_pytest.assertion.rewrite", "pluggy._callers",
    "pluggy._hooks", "pluggy._manager", "torch", "torch._C", "torch._tensor", "torch.testing",
    "torch.testing._comparison", "exercises.plugin",
)  # fmt: skip


DESCRIPTORS = (property, staticmethod, classmethod, types.GetSetDescriptorType, types.MemberDescriptorType)


def guarded() -> list[tuple]:
    """(namespace, name, object, its dotted name) for every function and class of GUARDED and
    every method or property of the classes they define: what `signed_outcomes` checks is still in
    place after each test."""
    found = []
    for name in GUARDED:
        try:
            module = importlib.import_module(name)
        except ImportError:  # e.g. an older pytest without _pytest.raises
            continue
        for key, value in vars(module).items():
            if callable(value):
                found.append((vars(module), key, value, f"{name}.{key}"))
            if isinstance(value, type) and value.__module__ == name:  # its methods and properties
                methods = [
                    (k, v) for k, v in vars(value).items() if callable(v) or isinstance(v, DESCRIPTORS)
                ]
                found += [(vars(value), k, v, f"{name}.{key}.{k}") for k, v in methods]
    return found


def signed_outcomes(config):
    """The plugin that writes each test's outcome, signed, to --exercise-stream as it ends. What
    it calls is bound here, before any lesson is imported; nothing of it is reachable by name."""
    fd = config.getoption("--exercise-key-fd")
    key, sign, write, dumps = os.read(fd, 64), _hashlib.hmac_digest, os.write, json.dumps
    os.close(fd)
    out = os.open(config.getoption("--exercise-stream"), os.O_WRONLY | os.O_APPEND)
    watched, open_tests = guarded(), {}

    def pytest_runtest_logreport(report):
        outcome, why = open_tests.setdefault(report.nodeid, ("passed", ""))
        if report.failed or (report.skipped and outcome == "passed"):
            crash = getattr(report.longrepr, "reprcrash", None)
            outcome, why = (
                "failed" if report.failed else "skipped",
                crash.message if crash else str(report.longrepr),
            )
            open_tests[report.nodeid] = outcome, why
        if report.when != "teardown":
            return
        del open_tests[report.nodeid]
        changed = [name for space, k, v, name in watched if space.get(k) is not v]
        if changed:
            outcome, why = "failed", f"the tested code replaced {changed[0]}, which grading relies on"
        mac = sign(key, f"{report.nodeid}\t{outcome}".encode(), "sha256").hex()
        line = dumps({"nodeid": report.nodeid, "outcome": outcome, "output": why[:800], "mac": mac})
        write(out, (line + "\n").encode())

    limit = config.getoption("--exercise-seconds")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(item):  # a loop that never ends fails its test, not the whole grading
        def too_long(signum, frame):
            raise TimeoutError(f"the test took longer than {limit:g} s (a loop that never ends?)")

        old = signal.signal(signal.SIGALRM, too_long)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            return (yield)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    plugin = types.ModuleType("exercise_stream")  # a plugin object that holds only these hooks
    plugin.pytest_runtest_logreport = pytest_runtest_logreport
    plugin.pytest_runtest_call = pytest_runtest_call
    return plugin


def pytest_collection_modifyitems(config, items):
    names = set(config.getoption("--exercise"))
    if names:
        keep = [i for i in items if exercises_of(i) & names]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
    if config.option.collectonly:  # `python -m exercises list` counts the tests
        results = config._exercise_results.setdefault("", {})
        for item in items:
            if exercises_of(item):
                results[item.nodeid] = {
                    "exercises": sorted(exercises_of(item)),
                    "outcome": "collected",
                    "output": "",
                }


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        from .catalog import BY_NAME

        found = UNFINISHED.finditer(ANSI.sub("", report.longreprtext or ""))  # kernels colour them
        unfinished = next((m for m in found if m.group(1) in BY_NAME), None)  # not a test's own f-string
        if unfinished and unfinished.group(1) not in exercises_of(item):
            report.outcome = "skipped"
            why = f"needs exercise {unfinished.group(1)}, not implemented in this copy"
            report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {why}")
    _record(item, report, item.config._exercise_results.setdefault(_variant(item.config), {}))
    return report


def _variant(config) -> str:
    return getattr(config, "_exercise_variant", "")


def _record(item, report, results: dict) -> None:
    """Fold the setup / call / teardown reports of one exercise test into one outcome."""
    names = exercises_of(item)
    if not names:
        return
    row = results.setdefault(item.nodeid, {"exercises": sorted(names), "outcome": "passed", "output": ""})
    if report.failed or (report.skipped and row["outcome"] == "passed"):
        row["outcome"] = "failed" if report.failed else "skipped"
        crash = getattr(report.longrepr, "reprcrash", None)  # the exception's own line
        why = crash.message if crash else str(report.longrepr)
        row["output"] = f"{item.name}: {why}"[:800]


@contextmanager
def replaced(patches: dict[str, str]):
    """Lesson functions replaced by other source for the duration: {exercise name: def source}."""
    from . import grading

    undo = []
    try:
        for name, source in patches.items():
            owner, attr = grading.owner_of(name)
            fn = grading.compile_function(name, source)
            undo.append((owner, attr, owner.__dict__[attr]))
            setattr(owner, attr, fn)
        yield
    finally:
        for owner, attr, old in reversed(undo):
            setattr(owner, attr, old)


def exercise_codes() -> dict:
    """The code object of every exercise's function -> its name (what `traced` watches for)."""
    from . import grading
    from .catalog import EXERCISES

    codes = {}
    for e in EXERCISES:
        owner, attr = grading.owner_of(e.name)
        codes[inspect.unwrap(owner.__dict__[attr]).__code__] = e.name
    return codes


@contextmanager
def traced(item, results: dict, codes: dict):
    """Record which exercise functions the test calls, by their code objects (so that a call
    through an alias or a default argument counts too): row["reached"]."""
    reached = set()

    def hook(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            reached.add(codes[frame.f_code])

    sys.setprofile(hook)
    try:
        yield
    finally:
        sys.setprofile(None)
        if item.nodeid in results:
            results[item.nodeid]["reached"] = sorted(reached)


def selected(items, variant: dict, results: dict) -> list:
    """The tests a variant runs: those of `only` (exercise names), plus with `reach` X every test
    that reached X in the traced variant before it; all tests when neither is given."""
    only, reach = set(variant.get("only") or []), variant.get("reach")
    if not only and not reach:
        return list(items)
    traced_rows = next((rows for rows in results.values() if any("reached" in r for r in rows.values())), {})
    reaching = {n for n, r in traced_rows.items() if reach in r.get("reached", [])}
    return [i for i in items if exercises_of(i) & (only | {reach}) or i.nodeid in reaching]


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    path = session.config.getoption("--exercise-variants")
    if not path or session.config.option.collectonly:
        return None
    from _pytest.runner import runtestprotocol

    all_results = session.config._exercise_results
    for variant in json.loads(open(path).read()):
        items = selected(session.items, variant, all_results)
        session.config._exercise_variant = variant["id"]
        results = all_results.setdefault(variant["id"], {})
        codes = exercise_codes() if variant.get("trace") else None  # once per variant, not per test
        with replaced(variant.get("patches", {})):
            for n, item in enumerate(items):
                with traced(item, results, codes) if codes else nullcontext():
                    runtestprotocol(item, nextitem=items[n + 1] if n + 1 < len(items) else None, log=False)
                item._initrequest()  # the same test runs again in the next variant
    return True


def pytest_sessionfinish(session):
    path = session.config.getoption("--exercise-report")
    if path:
        with open(path, "w") as f:
            json.dump(session.config._exercise_results, f, indent=1)
