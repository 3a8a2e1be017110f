"""The package's imports go one way, read from the source with ast (nothing is imported or run):

    entry points (cli.py, sample.py, __init__.py) -> commands/ -> stages -> parts -> base

Nothing imports upward and no two modules import each other in a loop (imports inside functions
count: a lazy import is still a dependency). Only commands/ parses flags (argparse) or writes to
stdout, and the package never names the repository's benchmarks/ folder in an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "charrnn_export"

# Layers from the bottom up; a module is in the layer of its own name or of the package it is in.
LAYERS = {
    "base": ("contract", "errors", "files", "checks"),
    "parts": ("runtimes", "checkpoints", "parity", "vocab", "data", "sampling", "engine", "host_sampler", "decode",
              "rng", "tfsetup", "step_variants", "distribute", "step_model", "int8", "run_dir", "litert_step", "cells",
              "forward"),
    "stages": ("train", "export", "generate", "bench", "serve", "web", "tflite_export"),
    "commands": ("commands",),
    "entry points": ("cli", "sample", "__init__"),
}
RANK = {layer: rank for rank, layer in enumerate(LAYERS)}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    top = module.split(".")[1] if "." in module else "__init__"
    for layer, names in LAYERS.items():
        if top in names:
            return layer
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layout.py")


def imported_modules(path: Path, tree: ast.AST) -> set[str]:
    """The package modules (and benchmarks modules) `path` imports, relative imports resolved."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import contract` imports contract, not the package's face
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
    return {name for name in found if name in MODULES or name.startswith("benchmarks")}


SOURCES = {path: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.rglob("*.py"))}
MODULES = {module_name(path) for path in SOURCES}
GRAPH = {module_name(path): imported_modules(path, tree) - {module_name(path)} for path, tree in SOURCES.items()}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


def test_nothing_imports_upward():
    upward = [f"{a} ({layer_of(a)}) imports {b} ({layer_of(b)})"
              for a, targets in GRAPH.items() for b in targets
              if not b.startswith("benchmarks") and RANK[layer_of(b)] > RANK[layer_of(a)]]
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "grey"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "grey":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "black"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    graph = {a: {b for b in targets if not b.startswith("benchmarks")} for a, targets in GRAPH.items()}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_itself_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_never_imports_the_benchmarks_folder():
    named = [f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets if b.startswith("benchmarks")]
    assert not named, named


@pytest.mark.parametrize("path", [p for p in SOURCES if layer_of(module_name(p)) not in ("commands", "entry points")],
                         ids=lambda p: module_name(p))
def test_only_commands_parse_flags_or_write_to_stdout(path):
    tree = SOURCES[path]
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            assert "argparse" not in names, f"{path.name}:{node.lineno} imports argparse"
        if isinstance(node, ast.Attribute) and node.attr == "stdout" and getattr(node.value, "id", "") == "sys":
            raise AssertionError(f"{path.name}:{node.lineno} writes to sys.stdout")
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print":
            assert any(k.arg == "file" for k in node.keywords), f"{path.name}:{node.lineno} prints to stdout"
