"""Import boundaries of STYLE.md: each package depends only on the ones below it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"zk_schema", "pvc_tasks", "pvc_workers", "pvc_web", "pvc_cli", "pvc_dev"}
ALLOWED = {
    "zk_schema": set(),
    "pvc_tasks": {"zk_schema"},
    "pvc_workers": {"pvc_tasks", "zk_schema"},
    "pvc_web": {"pvc_tasks", "zk_schema"},
    "pvc_cli": set(),
}


def imported_packages(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for name in names:
                top = name.split(".")[0]
                if top in OURS and top != package:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package):
    """No upward or sideways import: the CLI speaks only HTTP, tasks never import the worker or the API."""
    extra = {dep: files for dep, files in imported_packages(package).items() if dep not in ALLOWED[package]}
    assert extra == {}


def test_no_zookeeper_path_literal_outside_zk_schema():
    """ZooKeeper paths come only from zk_schema: no string literal in code that talks to ZooKeeper looks like a
    schema path (API URL prefixes in pvc_web's routes and the CLI are HTTP, not ZooKeeper)."""
    prefixes = ("/nodes", "/domains", "/jobs", "/config", "/schema", "/locks", "/lock")
    http_only = {"pvc_web/blueprint.py"}
    offenders = []
    for package in ("pvc_tasks", "pvc_workers", "pvc_dev", "pvc_web"):
        for path in (ROOT / package).rglob("*.py"):
            if str(path.relative_to(ROOT)) in http_only or path.parent.name == "routes":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                        node.value.startswith(prefixes):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert offenders == []


TIMING_NAMES = ("timeout", "interval", "settle", "delay", "deadline", "after", "tick", "lease")


def _timing_literals(tree: ast.AST) -> list[str]:
    """Numeric literals that set a timing: the argument of a sleep, wait or join, or the default of a parameter
    whose name says it is a timing."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("sleep", "wait", "join") and node.args and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, (int, float)):
            found.append(f"line {node.lineno}: {node.func.attr}({node.args[0].value})")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.args + node.args.kwonlyargs
            defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults + \
                node.args.kw_defaults
            for arg, default in zip(args, defaults, strict=True):
                if isinstance(default, ast.Constant) and isinstance(default.value, (int, float)) and \
                        not isinstance(default.value, bool) and \
                        any(word in arg.arg for word in TIMING_NAMES) and default.value:
                    found.append(f"line {node.lineno}: {node.name}({arg.arg}={default.value})")
    return found


@pytest.mark.parametrize("package", ["pvc_tasks", "pvc_workers"])
def test_every_timing_comes_from_defaults(package):
    """defaults.py is where every timing of the tasks and the worker lives, each with its reason: no sleep, wait or
    join of a literal and no literal default of a timeout-like parameter anywhere else."""
    literals = {str(path.relative_to(ROOT)): found for path in sorted((ROOT / package).rglob("*.py"))
                if path.name != "defaults.py" and (found := _timing_literals(ast.parse(path.read_text())))}
    assert literals == {}
