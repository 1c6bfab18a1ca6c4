"""The import structure of our packages: no cycles, function-level imports included, and no
function-level import of our own modules except where a heavy dependency justifies it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rl", "rollout", "rewards", "curricula", "configs")

# Files allowed to import our own modules inside a function, and why. Everything else imports at
# the top, so the module graph below is the whole truth.
LAZY_OWN_IMPORTS = {
    "rl/cli.py": "each command imports its recipe when run: transformers, DeepSpeed and vLLM take seconds to "
                 "import, and --help or --print-config needs none of them",
    "rl/build.py": "the vLLM engine is imported only when served: a machine that serves with the HF engine "
                   "needs no vLLM",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, bool, int]]:
    """(imported module of ours, inside a function?, line) for every import in `path`."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                # `from pkg import mod` imports pkg.mod when that is a module of ours
                names = [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in modules else child.module
                         for a in child.names]
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name:
                    found.append((name, in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m, _, _ in _imports(path, modules) if m != name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_among_our_modules():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_function_level_imports_of_our_modules_are_justified():
    modules = _modules()
    unjustified = []
    for path in modules.values():
        rel = path.relative_to(ROOT).as_posix()
        if rel in LAZY_OWN_IMPORTS:
            continue
        unjustified += sorted({f"{rel}:{line} imports {name}" for name, lazy, line in _imports(path, modules) if lazy})
    assert not unjustified, "function-level imports of our own modules:\n" + "\n".join(unjustified)


def test_packages_import_only_downwards():
    """rollout imports nothing of ours; rewards only rollout; curricula rollout and rewards (DESIGN.md)."""
    allowed = {"rollout": {"rollout"}, "rewards": {"rollout", "rewards"},
               "curricula": {"rollout", "rewards", "curricula"}}
    wrong = [f"{src} -> {dst}" for src, dsts in _graph().items() for dst in dsts
             if src.split(".")[0] in allowed and dst.split(".")[0] not in allowed[src.split(".")[0]]]
    assert not wrong, wrong
