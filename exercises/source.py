"""Blanking a function in source text: the signature, docstring and equation comments stay, the
body becomes `raise NotImplementedError("exercise NAME: hint")`.

Works on a lesson file and on a notebook cell alike (both are Python source), by the `ast`
positions of the function, so the rest of the file is left byte for byte as it was.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize

# a comment that cites an equation ("RQ Eq. 4") or states one ("r_d = r_{d-1} - e(k_d)")
EQUATION = re.compile(r"\bEq\.|\s=\s|<-")


def locate(tree: ast.Module, qualname: str) -> ast.FunctionDef:
    """The def of `qualname` ("nearest_code" or "KVCache.append") among the module's statements."""
    body, node = tree.body, None
    for part in qualname.split("."):
        node = next(
            (n for n in body if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name == part), None
        )
        if node is None:
            raise LookupError(f"no function {qualname} in this source")
        body = node.body
    if not isinstance(node, ast.FunctionDef):
        raise LookupError(f"{qualname} is a class, not a function")
    return node


def docstring_end(fn: ast.FunctionDef) -> int:
    """The last line (1-based) of the function's docstring: exercises keep theirs."""
    first = fn.body[0]
    if not (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        raise LookupError(f"{fn.name} has no docstring: an exercise keeps its docstring as the task")
    return first.end_lineno


def equation_comments(lines: list[str]) -> list[str]:
    """The comments of these source lines that cite or state an equation, without their '#'; a
    block of full-line comments is kept whole when one of its lines does."""
    blocks, last = [], None  # [[comment, ...]], the line of the previous full-line comment
    for tok in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
        if tok.type != tokenize.COMMENT:
            continue
        text, row = " ".join(tok.string.lstrip("#").split()), tok.start[0]
        full_line = not tok.line[: tok.start[1]].strip()
        if full_line and last == row - 1:
            blocks[-1].append(text)
        else:
            blocks.append([text])
        last = row if full_line else None
    return [c for block in blocks if any(EQUATION.search(c) for c in block) for c in block]


def blank(source: str, qualname: str, message: str) -> str:
    """`source` with the body of `qualname` after its docstring replaced by its equation comments
    and `raise NotImplementedError(message)`; everything else unchanged."""
    fn = locate(ast.parse(source), qualname)
    lines = source.splitlines(keepends=True)
    start, end = docstring_end(fn), fn.end_lineno  # body lines start+1 .. end (1-based)
    if start >= end:
        raise LookupError(f"{qualname} has nothing but a docstring")
    indent = " " * fn.body[0].col_offset
    new = [f"{indent}# {c}\n" for c in equation_comments(lines[start:end])]
    new.append(f"{indent}raise NotImplementedError({message!r})\n")
    return "".join(lines[:start] + new + lines[end:])


def function_source(source: str, qualname: str) -> str:
    """The def of `qualname` with its decorators, dedented: what the grader compiles on its own."""
    fn = locate(ast.parse(source), qualname)
    first = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
    lines = source.splitlines(keepends=True)[first - 1 : fn.end_lineno]
    return "".join(line[fn.col_offset :] if line.strip() else line for line in lines)
