"""The harness' module structure: no import cycles (lazy and TYPE_CHECKING imports included),
and one registry of transport kinds."""

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
    assert "harness.farm" in graph and "harness.inventory" in graph["harness.farm"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


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
