"""Code size of minrt (per object and per symbol), of the runner and of model kernels.

minrt's size is measured the way its acceptance criterion says: each C file of
runtime_c/src compiled on its own with the target's flags and ``-std=c99 -Os`` (plus
``-ffunction-sections -fdata-sections`` on ARMv7), and the ``text`` column of ``size``
(code + read-only data) summed over the objects.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from . import REPO_ROOT
from .cache import cache_dir, content_hash
from .errors import BuildError
from .targets import Target
from .toolchain import Toolchain

RUNTIME_DIR = REPO_ROOT / "runtime_c"
#: .text budget of minrt (bytes) per architecture: the issue's acceptance limits.
BUDGETS = {"armv7": 6144, "x86_64": 8192}

_NM_KIND = {"t": "text", "r": "text", "d": "data", "b": "bss"}


def minrt_flags(target: Target) -> list[str]:
    """The acceptance flags for the target's architecture."""
    flags = ["-std=c99", "-Os", *target.cc.cflags]
    if target.arch == "armv7":
        flags += ["-ffunction-sections", "-fdata-sections"]
    return flags


def size_elf(path: Path, target: Target, toolchain: Toolchain) -> dict[str, int]:
    """text/data/bss of one ELF file (object, archive member totals, or executable)."""
    out = toolchain.run([target.cc.tool("size"), "-t", str(Path(path).resolve())], cwd=Path(path).resolve().parent)
    return _parse_size_totals(out, path)


def _parse_size_totals(out: str, what: Path | str) -> dict[str, int]:
    lines = [line.split() for line in out.strip().splitlines()]
    if len(lines) < 2 or len(lines[-1]) < 3:
        raise BuildError(f"cannot read the output of size for {what}: {out!r}")
    text, data, bss = (int(v) for v in lines[-1][:3])
    return {"text": text, "data": data, "bss": bss}


def symbols(path: Path, target: Target, toolchain: Toolchain) -> list[dict[str, Any]]:
    """Sized symbols of an object: name, kind (text/data/bss), size; largest first."""
    out = toolchain.run(
        [target.cc.tool("nm"), "--size-sort", "-S", str(path)], cwd=Path(path).parent
    )
    result = []
    for line in out.splitlines():
        m = re.match(r"^[0-9a-fA-F]+\s+([0-9a-fA-F]+)\s+(\w)\s+(\S+)$", line.strip())
        if not m:
            continue
        kind = _NM_KIND.get(m.group(2).lower())
        if kind:
            result.append({"name": m.group(3), "kind": kind, "size": int(m.group(1), 16)})
    return sorted(result, key=lambda s: -s["size"])


def measure(target: Target, toolchain: Toolchain) -> dict[str, Any]:
    """Compile each runtime_c/src/*.c with the acceptance flags and report its sizes.

    The per-object figures are kept beside the objects, in a directory keyed by the sources,
    flags and toolchain, so every later run of the same tree reads them instead of rebuilding.
    """
    sources = sorted((RUNTIME_DIR / "src").glob("*.c"))
    if not sources:
        raise BuildError(f"no C sources in {RUNTIME_DIR / 'src'}")
    flags = minrt_flags(target)
    described = toolchain.describe()
    parts: list[bytes | str] = ["size/1", target.cc.tool("gcc"), *flags, described]
    for path in sorted((RUNTIME_DIR / "src").glob("*")) + sorted((RUNTIME_DIR / "include").glob("*")):
        parts += [path.name, path.read_bytes()]
    out_dir = cache_dir() / "builds" / f"size-{target.arch}-{content_hash(parts)}"
    out_dir.mkdir(parents=True, exist_ok=True)
    measured = out_dir / "objects.json"
    try:
        objects = json.loads(measured.read_text())
    except (OSError, ValueError):
        objects = []
        for src in sources:
            obj = out_dir / (src.stem + ".o")
            toolchain.run(
                [target.cc.tool("gcc"), *flags, f"-I{RUNTIME_DIR / 'include'}", "-c", str(src), "-o", str(obj)],
                cwd=out_dir,
            )
            sizes = size_elf(obj, target, toolchain)
            objects.append({"name": obj.name, "path": str(obj), **sizes,
                            "symbols": symbols(obj, target, toolchain)})
        tmp = measured.with_suffix(f".{os.getpid()}.tmp")  # concurrent runs: last rename wins
        tmp.write_text(json.dumps(objects))
        tmp.replace(measured)
    total = {k: sum(o[k] for o in objects) for k in ("text", "data", "bss")}
    budget = BUDGETS.get(target.arch)
    return {
        "target": target.name,
        "arch": target.arch,
        "compiler": target.cc.tool("gcc"),
        "flags": flags,
        "toolchain": described,
        "objects": objects,
        "total": total,
        "budget": budget,
        "within_budget": budget is None or total["text"] <= budget,
    }


def format_report(report: dict[str, Any]) -> str:
    """A human-readable table of a measure() report."""
    lines = [f"minrt on {report['target']} ({report['arch']}): {report['compiler']} {' '.join(report['flags'])}"]
    lines.append(f"{'object':<12}{'text':>8}{'data':>8}{'bss':>8}")
    for o in report["objects"]:
        lines.append(f"{o['name']:<12}{o['text']:>8}{o['data']:>8}{o['bss']:>8}")
    t = report["total"]
    lines.append(f"{'total':<12}{t['text']:>8}{t['data']:>8}{t['bss']:>8}")
    if report["budget"] is not None:
        verdict = "within" if report["within_budget"] else "OVER"
        lines.append(f"text budget {report['budget']}: {verdict}")
    return "\n".join(lines)


def diff(report: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Per-object and total .text/.data/.bss change of `report` against a saved `baseline`
    (both from measure()); objects only in one of them count as 0 in the other."""
    old = {o["name"]: o for o in baseline.get("objects", [])}
    new = {o["name"]: o for o in report["objects"]}
    objects = {}
    for name in sorted(set(old) | set(new)):
        objects[name] = {k: new.get(name, {}).get(k, 0) - old.get(name, {}).get(k, 0)
                         for k in ("text", "data", "bss")}
    total = {k: report["total"][k] - baseline.get("total", {}).get(k, 0) for k in ("text", "data", "bss")}
    return {"objects": objects, "total": total}


def run_sizes(target: Target, runner: Path, artifact: Any, toolchain: Toolchain) -> dict[str, int]:
    """The three figures a run records, with the toolchain that built the runner: minrt's
    .text (its objects, as budgeted), the whole runner binary's and the model kernels'."""
    return {
        "minrt_text": measure(target, toolchain)["total"]["text"],
        "runner_text": size_elf(runner, target, toolchain)["text"],
        "kernels_text": size_elf(Path(artifact.kernels_obj), target, toolchain)["text"],
    }


def weights_bytes(artifact: Any) -> int:
    """Bytes of the model's weights as they lie in flash or a file: params.bin's size (the
    aligned container: data, headers and alignment padding)."""
    return Path(artifact.params_bin).stat().st_size
