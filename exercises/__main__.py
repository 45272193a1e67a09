"""python -m exercises {list, make, grade, selfcheck}: hand out and grade the lessons' functions.

python -m exercises list                                  the exercises, their points and tests
python -m exercises make 02_rq.residual_quantize --out DIR   a student copy with those blanked
python -m exercises make --lesson 05_vq_diffusion --out DIR  ... every exercise of a lesson
python -m exercises make --all --out DIR                     ... all of them
python -m exercises grade [DIR] [--json results.json]        points per exercise (Gradescope JSON)
python -m exercises selfcheck                                the grader can fail: reference full,
                                                            blanked zero, every mistake loses points
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `common` and the lessons

from common.errors import UserError
from exercises import grading, handout, selfcheck
from exercises.catalog import BY_NAME, EXERCISES, LESSONS


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m exercises", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    add = lambda name, help: sub.add_parser(
        name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add("list", "the exercises, their points and their tests")
    make = add("make", "write a student copy with the chosen functions blanked")
    make.add_argument(
        "names", nargs="*", metavar="EXERCISE", help="exercises by name, e.g. 02_rq.residual_quantize"
    )
    make.add_argument(
        "--lesson", action="append", default=[], choices=LESSONS, help="every exercise of this lesson"
    )
    make.add_argument("--all", action="store_true", help="every exercise")
    make.add_argument("--out", required=True, type=Path, help="a new (or empty) folder for the student copy")
    grade = add("grade", "run the exercises' tests on a copy's lesson files; print points")
    grade.add_argument(
        "folder", nargs="?", type=Path, default=Path("."), help="the student's copy (default: .)"
    )
    grade.add_argument("--json", type=Path, metavar="FILE", help="also write Gradescope's results.json here")
    grade.add_argument("--all", action="store_true", help="grade every exercise, not only those handed out")
    check = add("selfcheck", "check that every exercise can fail (about half a minute)")
    check.add_argument("names", nargs="*", metavar="EXERCISE", help="only these exercises (default: all)")
    check.add_argument(
        "--full", action="store_true", help="run every test with each exercise blanked (slower)"
    )
    return p.parse_args(argv)


def chosen(args) -> list[str]:
    """The exercises named on the command line, in catalog order."""
    unknown = [n for n in args.names if n not in BY_NAME]
    if unknown:
        raise UserError(f"unknown exercise {unknown[0]!r}; `python -m exercises list` shows them")
    names = {e.name for e in EXERCISES if args.all or e.lesson in args.lesson or e.name in args.names}
    if not names:
        raise UserError("name at least one exercise, a --lesson or --all")
    return [e.name for e in EXERCISES if e.name in names]


def main(argv=None) -> int:
    args = parse(argv)
    if args.command == "list":
        tests = grading.run_tests(grading.ROOT, [e.name for e in EXERCISES], ["--collect-only"]).get("", {})
        print(f"{'exercise':<36} points  tests  hint")
        for e in EXERCISES:
            n = sum(e.name in r["exercises"] for r in tests.values())
            print(f"{e.name:<36} {e.points:>6}  {n:>5}  {e.hint}")
        print(f"{'total':<36} {sum(e.points for e in EXERCISES):>6}  {len(tests):>5}")
        return 0
    if args.command == "make":
        names = chosen(args)
        cells = handout.make(names, args.out)
        print(f"wrote {args.out}: {len(names)} exercises blanked in the lessons, {cells} in the notebooks")
        print(f"students: implement them; `python -m exercises grade {args.out}` grades the copy")
        return 0
    if args.command == "grade":
        if args.json and not args.json.parent.is_dir():  # before minutes of grading, not after
            raise UserError(f"--json {args.json}: no folder {args.json.parent} to write it in")
        names = [e.name for e in EXERCISES] if args.all else grading.handed_out(args.folder)
        rows, seconds = grading.grade(args.folder, names)
        print(grading.table(rows))
        print(f"graded in {seconds:.1f} s")
        if args.json:
            args.json.write_text(json.dumps(grading.gradescope(rows, seconds), indent=1) + "\n")
        return 0
    checks = selfcheck.run(
        chosen(argparse.Namespace(names=args.names, lesson=[], all=not args.names)), args.full
    )
    print(selfcheck.table(checks))
    return 1 if any(c.problems for c in checks) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
