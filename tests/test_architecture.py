"""The package's import graph: the stages (data, models, editing, generation, judges, metrics, results,
pipeline, ...) import each other without a circle, so loading a model can never end up running a
benchmark. Every import statement counts, the ones inside functions too: a lazy import is still a
dependency."""

import ast
import importlib.util
from collections import defaultdict
from pathlib import Path

ROOTS = ("msafety_bench", "msafety_bench.editors", "msafety_bench.suites", "msafety_bench.reports")


def package_files() -> dict[str, Path]:
    """Module name -> source file, for the package as installed (editors/suites/reports included)."""
    found, stack = {}, list(ROOTS)
    while stack:
        package = stack.pop()
        for location in importlib.util.find_spec(package).submodule_search_locations:
            for path in Path(location).iterdir():
                if path.suffix == ".py":
                    found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
                elif (path / "__init__.py").is_file() and f"{package}.{path.name}" not in ROOTS:
                    stack.append(f"{package}.{path.name}")
    return found


def stage(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "msafety_bench" or len(parts) < 2 or parts[1] == "__version__":
        return None
    return parts[1]


def stage_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in package_files().items():
        source = stage(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            edges[source] |= {t for t in map(stage, targets) if t and t != source}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(edges):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_stages_import_each_other_without_a_circle():
    edges = stage_graph()
    assert {"models", "pipeline", "judges", "results", "editors", "suites"} <= set(edges), sorted(edges)
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_organisms_and_rejudging_sit_above_the_stages_they_use():
    edges = stage_graph()
    assert "pipeline" not in edges["models"] and "organisms" not in edges["models"]
    assert "pipeline" in edges["organisms"]
    assert "judges" not in edges["results"] and {"judges", "results"} <= edges["rejudge"]


def test_the_cycle_finder_finds_a_planted_circle():
    assert find_cycle({"models": {"pipeline"}, "pipeline": {"judges"}, "judges": {"models"}}) is not None
    assert find_cycle({"models": {"data"}, "pipeline": {"models", "data"}}) is None
