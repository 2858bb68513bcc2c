"""Building and seeding the libFuzzer target fuzz_load.c (used by tests/test_runtime_c.py and
ci/bench_fuzz; import it with runtime_c/fuzz on sys.path).

A fuzz input is: u8 signature table, u32 graph length, graph.json, params.bin. The tables are
real kernels_sig.c files (from harness compile) and the C tests' sigs.c, each compiled under
its own symbol; seeds are real artifacts paired with their own table.
"""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

RT = Path(__file__).resolve().parent.parent
INC = [f"-I{RT / 'include'}"]
CORE = sorted(str(p) for p in (RT / "src").glob("*.c"))
SAN = ["-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all"]
COVERAGE = ["-fsanitize=fuzzer", "-fprofile-instr-generate", "-fcoverage-mapping"]


@dataclass(frozen=True)
class Seed:
    """A real graph + params pair and the signature table (index into the tables) of its kernels."""

    graph: bytes
    params: bytes
    table: int

    def bytes(self) -> bytes:
        return struct.pack("<BI", self.table, len(self.graph)) + self.graph + self.params


def _cc(argv: list[str], cwd: Path) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)}\n{proc.stderr}")


def build_fuzzer(out: Path, tables: list[Path], coverage: bool = False) -> Path:
    """clang build of fuzz_load.c + minrt (checking build: -DMINRT_GUARD) + the signature
    tables. coverage: source-based coverage instead of the sanitizers (to replay a corpus)."""
    work = out.parent / f"{out.name}.build"
    work.mkdir(parents=True, exist_ok=True)
    flags = ["-g", "-O2", "-DMINRT_GUARD", *(COVERAGE if coverage else SAN), *INC]
    objs = []
    for i, table in enumerate(tables):
        obj = work / f"table{i}.o"
        _cc(["clang", *flags, f"-Dminrt_model_signatures=fuzz_table{i}", "-c", str(table), "-o", str(obj)], work)
        objs.append(str(obj))
    listing = work / "tables.c"
    names = [f"fuzz_table{i}" for i in range(len(tables))]
    listing.write_text(
        '#include "minrt.h"\n'
        + "".join(f"extern const minrt_signatures {n};\n" for n in names)
        + "const minrt_signatures *const fuzz_tables[] = {" + ", ".join(f"&{n}" for n in names) + "};\n"
        + f"const int fuzz_ntables = {len(names)};\n")
    _cc(["clang", *flags, *CORE, str(RT / "fuzz" / "fuzz_load.c"), str(listing), *objs, "-o", str(out)], work)
    return out


def write_corpus(corpus: Path, seeds: list[Seed]) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds):
        (corpus / f"seed{i}").write_bytes(seed.bytes())
