"""Can the grader fail? For every exercise, in one pytest process:

(a) the reference implementation scores full points;
(b) with only that exercise blanked (the source `make` writes), it scores zero and every other
    exercise still scores full points: the tests that reached its function in the reference run
    (traced by code object) run again, every other test provably runs as in the reference;
(c) each wrong-but-plausible implementation in mistakes.py loses points.

The functions are swapped in the running lessons (plugin.replaced) instead of being written to
files, so the 60-odd versions cost one test session, not one each.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError

from . import grading, source
from .catalog import BY_NAME, EXERCISES
from .handout import message


def mistakes() -> dict:
    """exercises/mistakes.py's plausible mistakes; a student's copy leaves that file out."""
    try:
        from .mistakes import MISTAKES
    except ImportError:
        raise UserError(
            "selfcheck needs exercises/mistakes.py, which a student's copy leaves out (it gives answers away); "
            "run it in the grader's repository"
        ) from None
    return MISTAKES


def blanked_source(name: str) -> str:
    """The exercise's def as `make` leaves it in the student's lesson file."""
    e = BY_NAME[name]
    text = (grading.ROOT / f"{e.lesson}.py").read_text()
    return source.function_source(source.blank(text, e.qualname, message(name)), e.qualname)


def variants(names: list[str], full: bool = False) -> list[dict]:
    """The reference (traced), each exercise blanked alone, each mistake. A blanked exercise runs
    its own tests and every test that reached its function in the traced reference run (`full`:
    every test); a test that never calls the function runs exactly as in the reference."""
    out = [{"id": "reference", "trace": True}]
    out += [
        {"id": f"blank {n}", "patches": {n: blanked_source(n)}, **({} if full else {"reach": n})}
        for n in names
    ]
    out += [
        {"id": f"mistake {n} {i}", "patches": {n: src}, "only": [n]}
        for n in names
        for i, (_, src) in enumerate(mistakes().get(n, []))
    ]
    return out


@dataclass
class Check:
    name: str
    reference: float = 0.0
    blanked: float = 0.0
    others_full: bool = True  # every other exercise full while this one is blanked
    mistakes: list[tuple[str, float]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def run(names: list[str] | None = None, full: bool = False) -> list[Check]:
    names = names or [e.name for e in EXERCISES]
    vs = variants(names, full)
    with tempfile.TemporaryDirectory(prefix="selfcheck-") as tmp:
        path = Path(tmp) / "variants.json"
        path.write_text(json.dumps(vs))
        results = grading.run_tests(grading.ROOT, names, ["--exercise-variants", str(path)])
    reference = results.get("reference", {})
    # a test a variant did not run (it never reached the replaced function) scores as in the reference
    points = {
        v["id"]: {r.name: r.points for r in grading.score({**reference, **results.get(v["id"], {})}, names)}
        for v in vs
    }
    checks = []
    for n in names:
        c, full = Check(n), BY_NAME[n].points
        c.reference, c.blanked = points["reference"][n], points[f"blank {n}"][n]
        others = {m: p for m, p in points[f"blank {n}"].items() if m != n and p < BY_NAME[m].points}
        c.others_full = not others
        c.mistakes = [
            (what, points[f"mistake {n} {i}"][n]) for i, (what, _) in enumerate(mistakes().get(n, []))
        ]
        if c.reference < full:
            c.problems.append(f"the reference scores {c.reference:g}/{full}")
        if c.blanked > 0:
            c.problems.append(f"blanked, it still scores {c.blanked:g}")
        c.problems += [f"blanking it costs {m} points ({p:g})" for m, p in others.items()]
        if not c.mistakes:
            c.problems.append("no plausible mistake in exercises/mistakes.py")
        c.problems += [f"the mistake '{w}' scores full points" for w, p in c.mistakes if p >= full]
        checks.append(c)
    return checks


def table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'exercise':<{width}}  reference  blanked  others  mistakes (points each)"]
    for c in checks:
        full = BY_NAME[c.name].points
        mistakes = " ".join(f"{p:g}" for _, p in c.mistakes)
        others = "full" if c.others_full else "LOST"
        lines.append(
            f"{c.name:<{width}}  {c.reference:>5g}/{full:<3} {c.blanked:>7g}  {others:>6}  {mistakes}"
        )
    problems = [f"  {c.name}: {p}" for c in checks for p in c.problems]
    return "\n".join(lines + (["problems:", *problems] if problems else ["every exercise can fail"]))
