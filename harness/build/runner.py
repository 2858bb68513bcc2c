"""Building the on-device runner: minrt + runtime_c/runner + a model's kernels, one binary.

The binary is cached under ``cache_dir()/builds/<hash>/minrt-run``, the hash covering every
source file, the flags, the kernels object and the toolchain, so an unchanged build is free.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from harness import REPO_ROOT
from harness.cache import cache_dir, content_hash, seal, seal_broken
from harness.errors import BuildError
from harness.formats.signatures import SIGNATURES_C
from harness.config.targets import Target
from harness.build.toolchain import Toolchain

log = logging.getLogger(__name__)

RUNTIME_DIR = REPO_ROOT / "runtime_c"
RUNNER_NAME = "minrt-run"
# Optional runner sources that need more than a static C library (dlopen) stay out.
_RUNNER_EXCLUDE = {"dl.c"}
BUILD_FLAGS = ("-std=c99", "-Os", "-ffunction-sections", "-fdata-sections", "-Wl,--gc-sections")


class ArtifactLike(Protocol):
    """What the build needs from an artifact (harness.formats.artifact.Artifact provides it)."""

    dir: Path

    @property
    def kernels_obj(self) -> Path: ...

    @property
    def metadata(self) -> dict[str, Any]: ...


def runtime_sources() -> list[Path]:
    """minrt's core: exactly the C files of runtime_c/src."""
    return sorted((RUNTIME_DIR / "src").glob("*.c"))


def runner_sources() -> list[Path]:
    return sorted(p for p in (RUNTIME_DIR / "runner").glob("*.c") if p.name not in _RUNNER_EXCLUDE)


def runner_command(
    target: Target, kernels_obj: Path, output: Path, signatures: Path | None = None
) -> list[str]:
    """The one compiler command that builds the runner (all paths absolute); `signatures`
    is the kernels' signature table (kernels_sig.c), without which no kernel loads."""
    # MINRT_PROFILE: `minrt-run -p` can time each kernel (minrt's budgeted core is measured
    # without it, by harness.build.size)
    defines = ["-DMINRT_PROFILE"]
    if (RUNTIME_DIR / "runner" / "serial.c").exists():
        defines.append("-DMINRT_RUN_SERIAL")
    return [
        target.cc.tool("gcc"),
        *target.cc.cflags,
        *BUILD_FLAGS,
        *defines,
        f"-I{RUNTIME_DIR / 'include'}",
        f"-I{RUNTIME_DIR / 'runner'}",
        *(str(p) for p in runtime_sources() + runner_sources()),
        *([str(Path(signatures).resolve())] if signatures is not None else []),
        str(Path(kernels_obj).resolve()),
        *target.cc.ldflags,
        "-lm",
        "-o",
        str(output),
    ]


def build_runner(
    target: Target, artifact: ArtifactLike, toolchain: Toolchain, out_dir: Path | None = None
) -> Path:
    """Build (or reuse) minrt-run for `target` with the artifact's kernels; returns its path.

    With `out_dir`, the binary is also copied there and that copy is returned.
    """
    kernels = Path(artifact.kernels_obj).resolve()
    if not kernels.is_file():
        raise BuildError(f"kernels object {kernels} does not exist (compile the model first)")
    signatures: Path | None = Path(artifact.dir).resolve() / SIGNATURES_C
    if not signatures.is_file():
        log.warning("%s has no %s: the runner will refuse every kernel (recompile the model)",
                    artifact.dir, SIGNATURES_C)
        signatures = None
    placeholder = Path("/OUT")
    argv_key = runner_command(target, kernels, placeholder, signatures)
    headers = sorted((RUNTIME_DIR / "include").glob("*.h")) + sorted(
        (RUNTIME_DIR / "runner").glob("*.h")
    ) + sorted((RUNTIME_DIR / "src").glob("*.h"))
    parts: list[bytes | str] = ["minrt-run/1", toolchain.describe(), *argv_key]
    for path in runtime_sources() + runner_sources() + headers:
        parts += [str(path.relative_to(REPO_ROOT)), path.read_bytes()]
    parts.append(kernels.read_bytes())
    if signatures is not None:
        parts.append(signatures.read_bytes())
    key = content_hash(parts)
    build_dir = cache_dir() / "builds" / key
    binary = build_dir / RUNNER_NAME
    broken = seal_broken(build_dir) if binary.is_file() else "not built"
    if broken is None:
        log.info("runner for %s: cached %s", target.name, binary)
    else:
        if binary.is_file():
            log.warning("rebuilding: cached runner %s is unusable (%s)", binary, broken)
        build_dir.mkdir(parents=True, exist_ok=True)
        tmp = build_dir / f".{RUNNER_NAME}.{os.getpid()}.tmp"
        log.info("building %s for %s with %s", RUNNER_NAME, target.name, toolchain.describe())
        toolchain.run(runner_command(target, kernels, tmp, signatures), cwd=build_dir)
        if not tmp.is_file():
            raise BuildError(f"the compiler reported success but wrote no {tmp}")
        os.replace(tmp, binary)
        seal(build_dir, [RUNNER_NAME])
        log.info("built %s", binary)
    if out_dir is None:
        return binary
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / RUNNER_NAME
    shutil.copy2(binary, dest)
    return dest
