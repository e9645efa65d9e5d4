"""The suite keeps its own rules: every test asserts, nothing synchronises by sleeping, every cluster is checked."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
#: Tests on real servers: the integration scenarios and the chaos (fault) scenarios.
INTEGRATION = sorted((TESTS / "integration").glob("test_*.py")) + sorted((TESTS / "chaos").glob("test_*.py"))


def _called(node: ast.AST) -> str:
    """The called name of a call node (``x.y(...)`` -> "y"), else ""."""
    if not isinstance(node, ast.Call):
        return ""
    return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")


def _asserts(fn: ast.FunctionDef) -> bool:
    return any(isinstance(node, ast.Assert) or _called(node).startswith("assert_") or _called(node) == "raises"
               for node in ast.walk(fn))


def _always_true(node: ast.AST) -> bool:
    """An ``or`` with the constant True among its operands: a condition that holds whatever the others are (an
    ``or`` ending in a default value such as ``b"{}"`` is fine)."""
    return (isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or)
            and any(isinstance(v, ast.Constant) and v.value is True for v in node.values))


def test_every_test_asserts_something():
    """A test function with no assert, no assert_* helper and no pytest.raises cannot fail: there is none."""
    silent = [f"{path.name}::{fn.name}" for path in sorted(TESTS.rglob("test_*.py"))
              for fn in ast.walk(ast.parse(path.read_text())) if isinstance(fn, ast.FunctionDef)
              and fn.name.startswith("test_") and not _asserts(fn)]
    assert silent == []


def test_integration_tests_never_sleep_to_synchronise():
    """Integration tests wait for a state or a log line (wait_until), never a fixed sleep, and never write a
    condition that is always true."""
    offenders = [f"{path.name}:{node.lineno}" for path in INTEGRATION for node in ast.walk(ast.parse(path.read_text()))
                 if _called(node) == "sleep" or _always_true(node)]
    assert offenders == []


def test_every_integration_cluster_comes_from_the_checked_fixtures():
    """Clusters come from make_cluster / shared_cluster, whose teardown runs the invariant checker; a module that
    built its own LocalCluster would escape it."""
    offenders = [path.name for path in INTEGRATION if any(_called(node) in ("LocalCluster", "_cluster")
                                                          for node in ast.walk(ast.parse(path.read_text())))]
    assert offenders == []
