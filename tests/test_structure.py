"""The harness' module structure: rooms by role with imports pointing one way only (lazy and
TYPE_CHECKING imports included), no import cycles, and one registry of transport kinds."""

from __future__ import annotations

import ast
from pathlib import Path

import harness
from harness.transport import transport_kinds

PACKAGE = Path(harness.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the harness modules it imports anywhere in its source (importing a.b.c also
    imports the packages a.b)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            for cand in candidates:
                parts = cand.split(".")
                for k in range(2, len(parts) + 1):
                    dep = ".".join(parts[:k])
                    if dep in modules and dep != name and not name.startswith(dep + "."):
                        graph[name].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_harness_modules():
    graph = import_graph()
    assert "harness.farm.scheduler" in graph and "harness.farm.inventory" in graph["harness.farm.scheduler"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


#: The rooms of harness/, lowest first. A module may import its own room and rooms of a lower
#: rank, never a higher one: the pipeline reads downwards (resolve target -> compile -> build ->
#: deploy -> check -> record), and a room can be understood without the ones above it.
#: "top" is the top-level pipelines (run, tune); bench/ compares runtimes through them and farm/
#: runs them on many devices (neither imports the other); "entry" the CLI and the pytest plugin.
RANKS = {
    "base": 0,  # harness/__init__, errors, cache
    "formats": 1, "models": 1,
    "transport": 2,
    "config": 3,
    "compile": 4, "device": 4,
    "build": 5, "check": 5,
    "results": 6,
    "top": 7,
    "bench": 8, "farm": 8,
    "entry": 9,
}
TOP_LEVEL = {"harness": "base", "harness.errors": "base", "harness.cache": "base",
             "harness.run": "top", "harness.tune": "top",
             "harness.cli": "entry", "harness.cli_options": "entry", "harness.pytest_plugin": "entry"}


def room_of(module: str) -> str:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    parts = module.split(".")
    assert len(parts) >= 2 and parts[1] in RANKS, f"{module} is in no room: add it to one (or to TOP_LEVEL)"
    return parts[1]


def wrong_way_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in graph.items():
        own = room_of(module)
        for dep in deps:
            other = room_of(dep)
            if other != own and RANKS[other] >= RANKS[own]:
                bad.append(f"{module} ({own}) imports {dep} ({other})")
    return sorted(bad)


def test_the_direction_checker_finds_an_upward_import():
    graph = {"harness.device.board": {"harness.compile.model"}, "harness.compile.model": {"harness.formats.artifact"},
             "harness.formats.artifact": set()}
    assert wrong_way_imports(graph) == ["harness.device.board (device) imports harness.compile.model (compile)"]


def test_rooms_import_downwards_only():
    graph = import_graph()
    assert wrong_way_imports(graph) == []


def test_the_top_level_is_a_few_modules_and_the_rooms():
    """harness/ holds the entry points and pipelines; everything else lives in a room."""
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert top == sorted(m.rpartition(".")[2] for m in TOP_LEVEL if m != "harness")
    rooms = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert set(rooms) == set(RANKS) - {"base", "top", "entry"}


def test_every_transport_kind_is_registered_once_with_a_factory():
    kinds = transport_kinds()
    assert {"local", "qemu-user", "ssh", "serial"} <= set(kinds)
    for name, kind in kinds.items():
        assert kind.name == name and callable(kind.open) and kind.summary
        assert all(isinstance(key, str) for key in kind.options)


def test_a_copy_installed_outside_the_tree_says_what_it_needs(tmp_path):
    """A non-editable install has no runtime_c/ or targets/: a clear error, exit 2; pointed
    at the tree with MINRT_SOURCE, the same copy works."""
    import os
    import subprocess
    import sys

    repo = PACKAGE.parent
    site = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                            "--disable-pip-version-check", "--target", str(site), str(repo)],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    assert (site / "harness" / "cli.py").is_file() and not (site / "runtime_c").exists()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("MINRT_SOURCE", None)
    probe = [sys.executable, "-c", "import harness, sys; print(harness.__file__)"]
    assert subprocess.run(probe, env=env, capture_output=True, text=True, cwd=tmp_path).stdout.startswith(str(site))
    cmd = [sys.executable, "-m", "harness.cli", "targets"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no runtime_c/, targets/" in proc.stderr and "MINRT_SOURCE" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(cmd, env={**env, "MINRT_SOURCE": str(repo)}, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and "x86_64" in proc.stdout, proc.stderr
