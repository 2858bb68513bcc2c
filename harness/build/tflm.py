"""TFLite Micro built from source, for side-by-side benchmarks (issue 23).

The sources are never part of this repository: the user gives a directory holding one git
checkout per project (`SOURCE_NAMES`, laid out as `<dir>/<name>`; `--source NAME=DIR` replaces
one of them), and every result records the commit of each (`+dirty` when the checkout has
local changes).

TFLM's own Makefile builds the library (`libtensorflow-microlite.a`), so the flags and the
source list are TFLM's: its download step is replaced by copies of the given checkouts placed
where the download scripts would put them (with the same TFLM patches applied), CMSIS and
CMSIS-NN passed as CMSIS_PATH / CMSIS_NN_PATH, and the parts of the Makefile that only build
TFLM's own tests and examples switched off. The build lives under
`cache_dir()/tflm/<sources key>/` and is reused: make rebuilds only what changed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from harness.cache import cache_dir
from harness.errors import BuildError, TargetError

log = logging.getLogger(__name__)

#: The checkouts a TFLM build needs, as `<sources dir>/<name>`.
SOURCE_NAMES = ("tflite-micro", "cmsis-nn", "cmsis", "flatbuffers", "gemmlowp", "ruy", "kissfft")
#: Where TFLM's download scripts put each checkout under its downloads directory, and the
#: patch (relative to the tflite-micro checkout) they apply after unpacking.
_DOWNLOADS = {
    "flatbuffers": "tensorflow/lite/micro/tools/make/flatbuffers.patch",
    "kissfft": "third_party/kissfft/kissfft.patch",
    "gemmlowp": None,
    "ruy": None,
}
_MAKEFILE = "tensorflow/lite/micro/tools/make/Makefile"
#: Makefile variables emptied so that parsing it builds no test or example (those generate
#: C arrays with Python scripts that need PIL; a benchmark needs only the library) and
#: downloads nothing.
_NO_TESTS = ("MICRO_LITE_EXAMPLE_TESTS=", "MICRO_LITE_INTEGRATION_TESTS=",
             "MICRO_LITE_GEN_MUTABLE_OP_RESOLVER_TEST=", "OLD_MICRO_LITE_BENCHMARKS=",
             "MICRO_LITE_BENCHMARKS=", "MICRO_LITE_LAYER_BY_LAYER_OUTPUT=",
             "MICROLITE_TEST_SRCS=%_test.cc",  # a pattern: filters every *_test.cc out of the library
             # gemmlowp and ruy are fetched by rules into a fixed path inside the checkout; they
             # are already in DOWNLOADS_DIR, which is where the compile lines look for them
             "THIRD_PARTY_DOWNLOADS=")
#: TFLM's "release" build: no error strings, no DCHECKs (its smallest; what a product ships).
BUILD_TYPE = "release"


@dataclass(frozen=True)
class TflmSources:
    """The checkouts and their commits."""

    dirs: dict[str, Path]
    commits: dict[str, str]

    @classmethod
    def find(cls, root: Path | None, overrides: Mapping[str, Path] | None = None) -> TflmSources:
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(SOURCE_NAMES))
        if unknown:
            raise TargetError(f"unknown TFLM source name(s) {', '.join(unknown)} (known: {', '.join(SOURCE_NAMES)})")
        dirs: dict[str, Path] = {}
        for name in SOURCE_NAMES:
            if name in overrides:
                path = Path(overrides[name])
            elif root is not None:
                path = Path(root) / name
            else:
                raise TargetError(f"no directory for TFLM source '{name}': give --sources DIR (with DIR/{name}) "
                                  f"or --source {name}=DIR")
            if not path.is_dir():
                raise TargetError(f"TFLM source '{name}': {path} is not a directory "
                                  f"(expected a git checkout; layout: {', '.join(SOURCE_NAMES)} under one directory)")
            dirs[name] = path.resolve()
        if not (dirs["tflite-micro"] / _MAKEFILE).is_file():
            raise TargetError(f"{dirs['tflite-micro']}: not a tflite-micro checkout (no {_MAKEFILE})")
        return cls(dirs, {n: git_commit(p) for n, p in dirs.items()})

    def key(self) -> str:
        """Names the build directory: the same commits share one build."""
        text = "".join(f"{n}={self.commits[n]}\n" for n in SOURCE_NAMES)
        return hashlib.sha256(f"tflm-build/1\n{text}".encode()).hexdigest()[:16]


def git_commit(path: Path) -> str:
    """The checkout's commit, `+dirty` when it has local changes; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=30)
        if head.returncode:
            return "unknown (not a git checkout)"
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


@dataclass(frozen=True)
class TflmBuildKind:
    """One library configuration: a TFLM make target, its arch and kernels."""

    name: str  # cortex-m4, cortex-m7, armv7-linux
    make: tuple[str, ...]  # TARGET=..., TARGET_ARCH=..., OPTIMIZED_KERNEL_DIR=...
    prefix: str  # compiler prefix
    cmsis_nn: bool
    cflags: tuple[str, ...] = ()  # flags the firmware/runner's own sources need to match the library
    defines: tuple[str, ...] = field(default=("-DTF_LITE_STATIC_MEMORY", "-DNDEBUG", "-DTF_LITE_STRIP_ERROR_STRINGS"))


KINDS = {
    "cortex-m4": TflmBuildKind(
        "cortex-m4", ("TARGET=cortex_m_generic", "TARGET_ARCH=cortex-m4+fp", "OPTIMIZED_KERNEL_DIR=cmsis_nn"),
        "arm-none-eabi-", True, ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")),
    "cortex-m7": TflmBuildKind(
        "cortex-m7", ("TARGET=cortex_m_generic", "TARGET_ARCH=cortex-m7+fp", "OPTIMIZED_KERNEL_DIR=cmsis_nn"),
        "arm-none-eabi-", True, ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16")),
    # reference kernels; hard-float like Debian's armhf libraries and minrt's qemu-armv7 runner
    "armv7-linux": TflmBuildKind(
        "armv7-linux", ("TARGET=cortex_a_generic", "TARGET_ARCH=armv7-a", "FLOAT_ABI=hard", "FPU=neon-vfpv4"),
        "arm-linux-gnueabihf-", False, ("-march=armv7-a", "-mthumb", "-mfpu=neon-vfpv4", "-mfloat-abi=hard")),
}


@dataclass(frozen=True)
class TflmLibrary:
    """A built libtensorflow-microlite.a and what code linking against it needs."""

    kind: TflmBuildKind
    archive: Path
    includes: tuple[Path, ...]
    sources: TflmSources

    def compile_flags(self) -> list[str]:
        return [*self.kind.cflags, *self.kind.defines, *(f"-I{p}" for p in self.includes)]


def build_root(sources: TflmSources) -> Path:
    return cache_dir() / "tflm" / sources.key()


def prepare_downloads(sources: TflmSources, root: Path) -> Path:
    """Place flatbuffers, kissfft, gemmlowp and ruy where TFLM's download scripts would, patched
    as they would patch them; an empty pigweed (used only by TFLM's own tests)."""
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    (downloads / "pigweed").mkdir(exist_ok=True)
    for name, patch in _DOWNLOADS.items():
        dest = downloads / name
        stamp = downloads / f".{name}.commit"
        if dest.is_dir() and stamp.is_file() and stamp.read_text() == sources.commits[name]:
            continue
        log.info("TFLM: placing %s (%s) in %s", name, sources.commits[name][:12], dest)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(sources.dirs[name], dest, ignore=shutil.ignore_patterns(".git"), symlinks=True)
        if name == "flatbuffers":  # its download script deletes Bazel files before patching
            for p in [*dest.rglob("BUILD"), *dest.rglob("BUILD.bazel")]:
                p.unlink()
        if patch is not None:
            patch_file = sources.dirs["tflite-micro"] / patch
            done = subprocess.run(["patch", "-p1", "-s", "-i", str(patch_file)], cwd=dest, capture_output=True,
                                  text=True)
            if done.returncode:
                raise BuildError(f"TFLM's {patch} does not apply to {name} at {sources.commits[name]}: "
                                 f"{(done.stdout + done.stderr).strip()[:300]}")
        stamp.write_text(sources.commits[name])
    return downloads


def make_argv(sources: TflmSources, kind: TflmBuildKind, root: Path) -> list[str]:
    debug = "-g"  # DWARF only: code is unchanged, and `nm -l` can name each symbol's source file
    return [
        "make", "-f", _MAKEFILE, *kind.make, f"BUILD_TYPE={BUILD_TYPE}",
        f"DOWNLOADS_DIR={root / 'downloads'}", f"BASE_GENDIR={root / 'gen'}",
        f"CMSIS_PATH={sources.dirs['cmsis']}", f"CMSIS_NN_PATH={sources.dirs['cmsis-nn']}",
        "TARGET_TOOLCHAIN_ROOT=/usr/bin/", f"TARGET_TOOLCHAIN_PREFIX={kind.prefix}",
        f"CORE_OPTIMIZATION_LEVEL=-Os {debug}", f"KERNEL_OPTIMIZATION_LEVEL=-O2 {debug}",
        f"THIRD_PARTY_KERNEL_OPTIMIZATION_LEVEL=-O2 {debug}", *_NO_TESTS, "microlite",
    ]


#: The kernel sources (stems under tensorflow/lite/micro/kernels/, or its cmsis_nn/ where TFLM's
#: Makefile substitutes CMSIS-NN's) each TFLite builtin operator needs.
OP_KERNELS = {
    "ADD": ("add", "add_common"),
    "AVERAGE_POOL_2D": ("pooling", "pooling_common"),
    "MAX_POOL_2D": ("pooling", "pooling_common"),
    "CONV_2D": ("conv", "conv_common"),
    "DEPTHWISE_CONV_2D": ("depthwise_conv", "depthwise_conv_common"),
    "FULLY_CONNECTED": ("fully_connected", "fully_connected_common"),
    "RESHAPE": ("reshape", "reshape_common"),
    "SOFTMAX": ("softmax", "softmax_common"),
    "QUANTIZE": ("quantize", "quantize_common"),
    "DEQUANTIZE": ("dequantize", "dequantize_common"),
    "MUL": ("mul", "mul_common"),
    "PAD": ("pad", "pad_common"),
    "CONCATENATION": ("concatenation",),
    "LOGISTIC": ("logistic", "logistic_common"),
    "MEAN": ("reduce", "reduce_common"),
}
_ALWAYS_KERNELS = ("kernel_util", "micro_tensor_utils")


@dataclass(frozen=True)
class CompileLine:
    source: str
    obj: Path
    argv: list[str]


def compile_lines(dry_run: str) -> list[CompileLine]:
    """The compile commands of `make -n microlite` (TFLM's flags, TFLM's source list)."""
    lines = []
    for text in dry_run.splitlines():
        if " -c " not in text or " -o " not in text:
            continue
        argv = shlex.split(text)
        if "-c" not in argv or "-o" not in argv:
            continue
        lines.append(CompileLine(argv[argv.index("-c") + 1], Path(argv[argv.index("-o") + 1]), argv))
    return lines


def needed(line: CompileLine, stems: set[str]) -> bool:
    """Whether a library source is needed for operators whose kernel stems are `stems`: all of
    the framework, CMSIS-NN (the linker keeps what is called), only these kernels, no signal
    library (audio front end)."""
    src = line.source
    if src.startswith("signal/") or "/signal/" in src:
        return False
    if src.endswith("cortex_m_generic/micro_time.cc"):
        # wants a Cortex_DFP device header; the firmware defines TFLM's two time functions
        # itself, on the same SysTick counter as minrt's firmware
        return False
    if "tensorflow/lite/micro/kernels/" in src:
        return Path(src).stem in stems
    return True


def _compile(line: CompileLine, cwd: Path) -> tuple[bool, str | None]:
    """(whether it was compiled now, the compiler's complaint if it failed)."""
    src = cwd / line.source
    if line.obj.is_file() and src.is_file() and line.obj.stat().st_mtime >= src.stat().st_mtime:
        return False, None  # sources are pinned by commit (the build directory's key); headers too
    line.obj.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(line.argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        return False, f"{line.source}: {done.stderr.strip()[-800:]}"
    return True, None


def build_library(sources: TflmSources, kind_name: str, ops: Sequence[str], jobs: int | None = None) -> TflmLibrary:
    """Build (or bring up to date) TFLM's library for one configuration, with the kernels of
    `ops` (TFLite builtin operator names) only: TFLM's Makefile gives the compile lines, this
    runs the ones needed (a full library is ~330 files; the benchmark's models need ~120)."""
    if kind_name not in KINDS:
        raise TargetError(f"no TFLM build for '{kind_name}' (known: {', '.join(KINDS)})")
    unknown = sorted(set(ops) - set(OP_KERNELS))
    if unknown:
        raise BuildError(f"no TFLM kernel sources known for operator(s) {', '.join(unknown)} "
                         "(add them to harness.build.tflm.OP_KERNELS)")
    kind = KINDS[kind_name]
    for tool in ("make", "patch", f"{kind.prefix}g++"):
        if shutil.which(tool) is None:
            raise BuildError(f"building TFLM needs '{tool}' on this host (run ci/setup)")
    root = build_root(sources)
    prepare_downloads(sources, root)
    tflm = sources.dirs["tflite-micro"]
    argv = make_argv(sources, kind, root)
    # -n -B: every compile line, up to date or not (this module decides what to recompile)
    done = subprocess.run([*argv[:3], "-n", "-B", *argv[3:]], cwd=tflm, capture_output=True, text=True)
    if done.returncode:
        raise BuildError(f"TFLM's Makefile refused the {kind.name} configuration (exit {done.returncode}):\n"
                         f"{done.stderr.strip()[-1500:]}")
    stems = set(_ALWAYS_KERNELS) | {s for op in ops for s in OP_KERNELS[op]}
    lines = [c for c in compile_lines(done.stdout) if needed(c, stems)]
    if not lines:
        raise BuildError(f"TFLM's Makefile listed no compile command for {kind.name}")
    log.info("TFLM: %s library, %d sources (TFLM %s, CMSIS-NN %s) in %s", kind.name, len(lines),
             sources.commits["tflite-micro"][:12], sources.commits["cmsis-nn"][:12], root / "gen")
    errors, built = [], 0
    with ThreadPoolExecutor(max_workers=jobs or max(1, min(2, os.cpu_count() or 1))) as pool:
        for compiled, error in pool.map(lambda c: _compile(c, tflm), lines):
            if error:
                errors.append(error)
            elif compiled:
                built += 1
                if built % 20 == 0:
                    log.info("TFLM: %s: %d compiled", kind.name, built)
    if errors:
        raise BuildError(f"TFLM {kind.name}: {len(errors)} source(s) failed to compile; first: {errors[0]}")
    tag = hashlib.sha256(" ".join(sorted(stems)).encode()).hexdigest()[:8]
    archive = root / "lib" / f"{kind.name}-{tag}" / "libtflm.a"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.unlink(missing_ok=True)
    ar = subprocess.run([f"{kind.prefix}ar", "rcs", str(archive), *(str(c.obj) for c in lines)],
                        capture_output=True, text=True)
    if ar.returncode:
        raise BuildError(f"{kind.prefix}ar failed: {ar.stderr.strip()[:300]}")
    dl = root / "downloads"
    includes = (tflm, dl / "flatbuffers" / "include", dl / "gemmlowp", dl / "ruy")
    log.info("TFLM: %s library %s (%d newly compiled)", kind.name, archive, built)
    return TflmLibrary(kind, archive, includes, sources)
