"""The suite keeps its own rules: every test asserts, nothing synchronises by sleeping, every cluster is checked."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
INTEGRATION = sorted((TESTS / "integration").glob("test_*.py"))


def _asserts(fn: ast.FunctionDef) -> bool:
    for node in ast.walk(fn):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name.startswith("assert_") or name == "raises":
                return True
    return False


def test_every_test_asserts_something():
    """A test function with no assert, no assert_* helper and no pytest.raises cannot fail: there is none."""
    silent = [f"{path.name}::{fn.name}" for path in sorted(TESTS.rglob("test_*.py"))
              for fn in ast.walk(ast.parse(path.read_text())) if isinstance(fn, ast.FunctionDef)
              and fn.name.startswith("test_") and not _asserts(fn)]
    assert silent == []


def test_integration_tests_never_sleep_to_synchronise():
    """Integration tests wait for a state or a log line (wait_until), never a fixed sleep, and never write a
    condition that is always true."""
    offenders = [f"{path.name}:{n}" for path in INTEGRATION
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if "time.sleep(" in line or "or True" in line]
    assert offenders == []


def test_every_integration_cluster_comes_from_the_checked_fixtures():
    """Clusters come from make_cluster / shared_cluster, whose teardown runs the invariant checker; a module that
    built its own LocalCluster would escape it."""
    offenders = [path.name for path in INTEGRATION if "LocalCluster(" in path.read_text()
                 or "_cluster(zookeeper" in path.read_text()]
    assert offenders == []
