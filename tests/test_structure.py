"""The package's shape (docs/design.md, Which module may import which): no import circle,
imports only in the data's direction, no private names used across modules, small modules,
and every evaluator reachable by name."""

import ast
import pathlib

import pytest

from tempret_jax import config, evaluators

REPO = pathlib.Path(__file__).parent.parent
PACKAGE = REPO / "tempret_jax"
MAX_LINES = 450
PURE_LEAVES = {"tempret_jax.relevance", "tempret_jax.sharding", "tempret_jax.atomic",
               "tempret_jax.ranking"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: pathlib.Path) -> dict[str, set[str]]:
    """{imported tempret_jax module: names taken from it} of one file (function-level imports
    included). ``from pkg import mod`` counts as an import of ``pkg.mod``."""
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tempret_jax"):
                    found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tempret_jax"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                if child in MODULES:
                    found.setdefault(child, set())
                else:
                    found.setdefault(node.module, set()).add(alias.name)
    return found


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def _cycle():
    """One import circle among the package's modules, or None."""
    state: dict[str, str] = {}

    def visit(node, trail):
        state[node] = "open"
        for dep in GRAPH.get(node, {}):
            if dep not in GRAPH or dep == node:
                continue
            if state.get(dep) == "open":
                return trail[trail.index(dep):] + [dep] if dep in trail else [node, dep]
            if dep not in state:
                found = visit(dep, trail + [dep])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in GRAPH:
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_circle():
    assert _cycle() is None


@pytest.mark.parametrize("layer, allowed", [
    ("tempret_jax.models", {"tempret_jax.models"}),
    ("tempret_jax.losses", {"tempret_jax.losses"} | PURE_LEAVES),
    ("tempret_jax.global_loss", {"tempret_jax.losses"} | PURE_LEAVES),
    ("tempret_jax.metrics", PURE_LEAVES),
    ("tempret_jax.data", {"tempret_jax.data"} | PURE_LEAVES),
])
def test_lower_layers_import_nothing_above_them(layer, allowed):
    for name, deps in GRAPH.items():
        if name == layer or name.startswith(layer + "."):
            bad = [d for d in deps if d != name and not any(
                d == a or d.startswith(a + ".") for a in allowed)]
            assert not bad, f"{name} imports {bad}"


def test_evaluators_do_not_import_the_trainer_or_the_loop():
    for name, deps in GRAPH.items():
        if name.startswith("tempret_jax.evaluators"):
            assert not {"tempret_jax.train", "tempret_jax.step"} & set(deps), name


def _private_uses(path: pathlib.Path) -> list[str]:
    """`from tempret_jax.x import _y` and `x._y` where x is an imported tempret_jax module."""
    tree = ast.parse(path.read_text())
    aliases, bad = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tempret_jax"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    bad.append(f"from {node.module} import {alias.name}")
                if f"{node.module}.{alias.name}" in MODULES:
                    aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tempret_jax"):
                    aliases.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            bad.append(f"{node.value.id}.{node.attr}")
    return bad


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")) + sorted((REPO / "tools").glob("*.py"))
                         + sorted((REPO / "configs").glob("*.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_no_private_name_is_used_across_modules(path):
    assert _private_uses(path) == []


def test_no_module_of_the_package_is_over_the_limit():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def test_every_evaluator_is_a_module_with_the_evaluator_function():
    on_disk = {p.stem for p in (PACKAGE / "evaluators").glob("*.py") if p.stem != "__init__"}
    assert on_disk == set(config.EVALUATORS)  # the scalars: tests/test_evaluate_run.py
    for name in config.EVALUATORS:
        assert callable(evaluators.get(name).evaluate)


def test_the_evaluators_of_a_config_run_and_their_results_merge(monkeypatch):
    """evaluators.run calls each evaluator of config.evals and merges records and scalars;
    two evaluators reporting one name is an error naming it."""
    fake = {
        "a": lambda *args: evaluators.Result({"a_score": 1.0}, {"a": 1.0}, "table a"),
        "b": lambda *args: evaluators.Result({"b_score": 2.0}, {"b": 2.0}, "table b"),
        "clash": lambda *args: evaluators.Result({"a_score": 3.0}, {"c": 3.0}, "table c"),
    }
    monkeypatch.setattr(evaluators, "get", lambda name: type(
        "Module", (), {"evaluate": staticmethod(fake[name])}))
    c = config.default_config()
    c.evals = ("a", "b")
    merged = evaluators.run(None, None, None, c)
    assert merged.record == {"a_score": 1.0, "b_score": 2.0}
    assert merged.scalars == {"a": 1.0, "b": 2.0} and merged.table == "table a\n\ntable b"
    c.evals = ("a", "clash")
    with pytest.raises(ValueError, match=r"evaluator 'clash' reports record \['a_score'\]"):
        evaluators.run(None, None, None, c)
