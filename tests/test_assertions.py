"""The test suite's own assertions check something: no check hidden in an assert's message, no
assert on a literal that is always true (a non-empty tuple, a string), no value compared with
itself. Issue 24 found ``assert code == 0, err and out.exists()``, whose file check was only the
message. (Always-true expressions such as ``size >= 0`` need a reader, not this scan.)"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _always_true(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return bool(node.value)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts)
    return isinstance(node, (ast.JoinedStr, ast.Lambda, ast.Dict)) and not (
        isinstance(node, ast.Dict) and not node.keys)


def _suspects(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if not isinstance(node, ast.Assert):
            continue
        where = f"{name}:{node.lineno}: {ast.get_source_segment(source, node)}"
        if isinstance(node.msg, (ast.Compare, ast.BoolOp)):
            found.append(f"{where}  (the message is a check that is never made)")
        if _always_true(node.test):
            found.append(f"{where}  (always true)")
        if (isinstance(node.test, ast.Compare) and len(node.test.comparators) == 1
                and ast.dump(node.test.left) == ast.dump(node.test.comparators[0])):
            found.append(f"{where}  (compares a value with itself)")
    return found


def test_the_scan_finds_the_patterns_it_is_for() -> None:
    bad = "\n".join(["assert code == 0, err and out.exists()", "assert x, y == z",
                     "assert (a == b, 'message')", "assert 'text'", "assert n == n"])
    assert len(_suspects(bad, "example.py")) == 5
    good = "\n".join(["assert code == 0, err", "assert out.exists() and code == 0, (out, err)",
                      "assert f(x), 'message'", "assert (a, b) == (1, 2)"])
    assert _suspects(good, "example.py") == []


def test_no_assertion_in_the_suite_checks_nothing() -> None:
    files = sorted(TESTS.rglob("*.py"))
    assert len(files) > 10
    found = [s for path in files for s in _suspects(path.read_text(), str(path.relative_to(TESTS)))]
    assert found == []
