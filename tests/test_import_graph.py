"""The import graph of spiral_fast (issue 17): no import circles, no upward imports, few in-function imports.

Every module of the package is parsed with ``ast`` (nothing is imported) and every import of a
spiral_fast module, at the top of a file, inside a function or under ``if TYPE_CHECKING:``, is an
edge: an import seen only by type checkers still couples the two modules (and a circle through it
breaks as soon as someone turns it into a real import). ``from spiral_fast.x import y``
is an edge to ``spiral_fast.x.y`` when that is a module, else to ``spiral_fast.x``; a package stands
for its ``__init__``. ``LAYERS`` ranks the layers, lowest first: a module may import its own rank
and below, never above.

Findings are reported per part: the lower layers (``LOWER``) and the upper ones.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "spiral_fast"

# package prefix -> rank (the final layout; a module belongs to its longest matching prefix)
LAYERS = {
    "spiral_fast._utils": 0,
    "spiral_fast._version": 0,
    "spiral_fast._fields": 0,  # documented, validated dataclass fields of the settings (stdlib only)
    "spiral_fast.distributed": 0,  # every torch.distributed helper (torch only)
    "spiral_fast.kernels": 0,
    "spiral_fast.ops": 1,
    "spiral_fast.algorithm": 2,
    "spiral_fast.packing": 3,
    "spiral_fast.models": 3,
    "spiral_fast.policy_step": 4,  # the step's internals (today spiral_fast.training)
    "spiral_fast.rollout": 5,
    "spiral_fast.tasks": 5,
    "spiral_fast.evaluate": 6,
    "spiral_fast.recipe": 7,  # the training recipe (today spiral_fast.train and spiral_fast.demo)
    "spiral_fast.profile_memory": 7,
    "spiral_fast.cli": 8,
    "spiral_fast.train": 8,  # the `python -m spiral_fast.train` entry
    "spiral_fast": 9,  # the package __init__ (lazy exports); matches only itself
}
EXTENSIONS = {"spiral_fast.packing._native"}  # compiled (csrc/): no .py file, no Python imports
LOWER = (
    "spiral_fast._utils",
    "spiral_fast._fields",
    "spiral_fast.kernels",
    "spiral_fast.ops",
    "spiral_fast.algorithm",
    "spiral_fast.packing",
    "spiral_fast.models",
)
MAX_IN_FUNCTION_IMPORTS = 10
PARTS = ["lower", "upper"]


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def _known(name: str) -> bool:
    return name in MODULES or name in EXTENSIONS


def _existing(name: str) -> str:
    """The longest prefix of ``name`` that is a module (``import a.b.c`` of a missing c is an edge to a.b)."""
    while not _known(name) and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The spiral_fast modules that one import statement of ``module`` imports."""
    if isinstance(node, ast.Import):
        return [_existing(a.name) for a in node.names if a.name.split(".")[0] == "spiral_fast"]
    base = node.module or ""
    if node.level:
        package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
        package = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{package}.{base}" if base else package
    if base.split(".")[0] != "spiral_fast":
        return []
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if _known(sub) else _existing(base))
    return out


def _graph(trees: dict[str, ast.Module] | None = None) -> dict[str, set[str]]:
    """module -> the spiral_fast modules it imports, every import statement counted (those under
    ``if TYPE_CHECKING:`` included)."""
    graph = {}
    for module, tree in (TREES if trees is None else trees).items():
        graph[module] = {
            t
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for t in _targets(module, node)
            if t != module
        }
    return graph


def _in_function_imports() -> list[str]:
    """ "path:line: statement" of every import of spiral_fast inside a function body."""
    found = {}
    for module, tree in TREES.items():
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and _targets(module, node):
                    path = MODULES[module].relative_to(ROOT.parent)
                    found[id(node)] = f"{path}:{node.lineno}: {ast.unparse(node)}"
    return sorted(found.values())


def _rank(module: str) -> int | None:
    if module == "spiral_fast":
        return LAYERS["spiral_fast"]
    prefixes = [p for p in LAYERS if p != "spiral_fast" and (module == p or module.startswith(p + "."))]
    return LAYERS[max(prefixes, key=len)] if prefixes else None


def _is_lower(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in LOWER)


def _in_part(module: str, part: str) -> bool:
    return _is_lower(module) == (part == "lower")


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_known_edges():
    graph = _graph()
    assert "spiral_fast.ops.dispatch" in graph["spiral_fast.ops.logprobs.op"]
    assert "spiral_fast.packing.native" in graph["spiral_fast.packing.pack"]  # `from package import module`
    assert "spiral_fast.packing" in graph["spiral_fast.policy_step.forward"]  # `from package import name`
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_counts_type_checking_imports():
    """An import under ``if TYPE_CHECKING:`` is an edge like any other (it used to be skipped, which hid
    the policy_step.batch <-> policy_step.advantages circle)."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from spiral_fast.policy_step.batch import SpiralBatch\n"
    )
    graph = _graph({"spiral_fast.policy_step.advantages": ast.parse(source)})
    assert graph["spiral_fast.policy_step.advantages"] == {"spiral_fast.policy_step.batch"}


@pytest.mark.parametrize("part", PARTS)
def test_every_module_has_a_layer(part):
    missing = [m for m in MODULES if _in_part(m, part) and _rank(m) is None]
    assert not missing, f"modules without a layer: {missing}; add their package to LAYERS in {__file__}"


@pytest.mark.parametrize("part", PARTS)
def test_no_upward_imports(part):
    bad = []
    for module, targets in _graph().items():
        if not _in_part(module, part):
            continue
        for target in sorted(targets):
            rank, target_rank = _rank(module), _rank(target)
            if rank is None:
                continue  # test_every_module_has_a_layer names it
            if target_rank is None or target_rank > rank:
                bad.append(f"{module} (layer {rank}) imports {target} (layer {target_rank})")
    assert not bad, "upward imports (or modules missing from LAYERS):\n" + "\n".join(bad)


@pytest.mark.parametrize("part", PARTS)
def test_no_import_circles(part):
    graph = _graph()
    if part == "lower":
        graph = {m: {t for t in ts if _is_lower(t)} for m, ts in graph.items() if _is_lower(m)}
    cycle = _find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_lower_layers_import_only_kernels_inside_functions():
    """The lower layers import a spiral_fast module inside a function only to defer triton
    (modules under spiral_fast/kernels import it at their top)."""
    lazy = [line for line in _in_function_imports() if _is_lower(_module_name(ROOT.parent / line.split(":")[0]))]
    assert lazy, "the lazy kernel imports were expected to be found"
    bad = [line for line in lazy if "spiral_fast.kernels" not in line]
    assert not bad, "in-function imports other than of kernels:\n" + "\n".join(bad)


def test_few_in_function_imports():
    found = _in_function_imports()
    assert len(found) <= MAX_IN_FUNCTION_IMPORTS, (
        f"{len(found)} imports of spiral_fast inside functions (at most {MAX_IN_FUNCTION_IMPORTS}); move "
        "them to the top of their file unless they import an optional dependency:\n" + "\n".join(found)
    )


def _registers_a_self_check(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.Call) and ast.unparse(n.func).endswith("register_self_check") for n in ast.walk(tree))


def test_ops_own_every_self_check():
    """Every op registers its self-check beside its definition, in the ops layer, and
    ``spiral_fast.ops.checks`` (``spiral_fast.self_check``) imports each of them: no check lives in a
    higher layer, so checking every op needs nothing above ops."""
    registering = sorted(m for m, tree in TREES.items() if _registers_a_self_check(tree))
    assert {"spiral_fast.ops.logprobs.op", "spiral_fast.ops.tree_attention.op"} <= set(registering)
    outside = [m for m in registering if _rank(m) != LAYERS["spiral_fast.ops"]]
    assert not outside, f"self-checks registered outside the ops layer: {outside}"
    missing = set(registering) - _graph()["spiral_fast.ops.checks"]
    assert not missing, f"spiral_fast.ops.checks does not import {sorted(missing)}, so self_check() would skip them"
