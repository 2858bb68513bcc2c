"""Firmware models laid out at build time (harness.build.prebuilt): the layout is minrt_load's.

The firmware image holds minrt's tables as constants in flash, with every tensor's address
fixed at link time; they must be exactly where minrt_load would put them. Here the real
loader (runtime_c/src, built with the host's gcc) loads each example model compiled for
x86_64 (its real kernels_sig.c; kernels resolved to a stub, since nothing runs) and prints
where each entry's data lies; the Python layout must agree byte for byte. The firmware tests
(tests/test_firmware.py) run the tables themselves on QEMU.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness import REPO_ROOT
from harness.build.prebuilt import layout, prebuild
from harness.errors import BuildError
from harness.formats import tensorfile

RT = REPO_ROOT / "runtime_c"

LAYOUT_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "minrt.h"
#include "internal.h"

extern const minrt_signatures minrt_model_signatures;

static int stub(void *self, const TVMFFIAny *args, int32_t n, TVMFFIAny *ret) {
  (void)self, (void)args, (void)n, (void)ret;
  return 0;
}
static minrt_kernel any_kernel(void *ctx, const char *name, size_t len) {
  (void)ctx, (void)name, (void)len;
  return stub;
}
/* the file in a 64-byte aligned buffer (params used in place), NUL after it */
static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  char *buf;
  if (!f || fseek(f, 0, SEEK_END)) exit(3);
  *len = (size_t)ftell(f);
  rewind(f);
  buf = aligned_alloc(64, (*len + 64) & ~(size_t)63);
  if (!buf || fread(buf, 1, *len, f) != *len) exit(3);
  buf[*len] = 0;
  fclose(f);
  return buf;
}
int main(int argc, char **argv) {
  size_t glen, plen, need = 0, have = 0;
  char *graph, *params;
  uint8_t *arena = NULL;
  minrt *m = NULL;
  minrt_err err;
  uint32_t e, top;
  if (argc != 4) return 2;
  graph = slurp(argv[1], &glen);
  params = slurp(argv[2], &plen);
  minrt_artifact a = {graph, glen, params, plen, strtoul(argv[3], 0, 10), any_kernel, 0, &minrt_model_signatures};
  while (minrt_load(&m, &a, arena, have, &need, &err) == MINRT_E_ARENA && need > have) {
    free(arena);
    arena = aligned_alloc(64, need);
    have = need;
  }
  if (!m) {
    printf("error %s\n", err.msg);
    return 1;
  }
  top = m->arena_use[MINRT_USE_GRAPH]; /* the first storage: minrt's tables come before it */
  printf("ws %ld\narena %ld\n", (long)(m->ws - arena - top), (long)(have - top));
  for (e = 0; e < m->n_ent; e++) {
    uint8_t *d = m->ent[e].t.data;
    if (d >= arena && d < arena + have) printf("arena %ld\n", (long)(d - arena - top));
    else printf("params %ld\n", (long)(d - (uint8_t *)params));
  }
  for (e = 0; e < m->n_inputs; e++) printf("input %ld\n", (long)((minrt_entry *)(void *)m->inputs[e] - m->ent));
  for (e = 0; e < m->n_outputs; e++) printf("output %ld\n", (long)((minrt_entry *)(void *)m->outputs[e] - m->ent));
  return 0;
}
"""


def loader_layout(tmp: Path, artifact) -> list[str]:
    """What minrt_load does with the artifact: its lines (see LAYOUT_C)."""
    src = tmp / "layout.c"
    src.write_text(LAYOUT_C)
    exe = tmp / "layout"
    cc = subprocess.run(["gcc", "-std=c11", "-O1", "-Wall", "-Werror", f"-I{RT / 'include'}", f"-I{RT / 'src'}",
                         str(src), *(str(p) for p in sorted((RT / "src").glob("*.c"))),
                         str(Path(artifact.dir) / "kernels_sig.c"), "-o", str(exe)], check=False, capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    done = subprocess.run([str(exe), str(artifact.graph_json), str(artifact.params_bin),
                           str(artifact.workspace_bytes)], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize("model", ["mlp", "cnn", "residual", "multi_io", "concat", "dscnn"])
def test_layout_is_where_minrt_load_puts_every_tensor(model, compiled_models, tmp_path) -> None:
    art = compiled_models.get(model, "x86_64")
    graph = json.loads(art.graph_json.read_text())
    params = tensorfile.data_offsets(art.params_bin.read_bytes())
    lay = layout(graph, params, art.workspace_bytes)
    expected = [f"ws {lay.ws_at}", f"arena {lay.arena_bytes}", *(f"{k} {v}" for k, v in lay.data),
                *(f"input {e}" for e in lay.inputs), *(f"output {e}" for e in lay.heads)]
    assert loader_layout(tmp_path, art) == expected
    # what the firmware's arena holds: inputs and outputs before the tail, storages before the workspace
    assert 0 < lay.keep_bytes <= lay.ws_at <= lay.arena_bytes


def test_tables_are_flash_constants_pointing_into_the_arena(compiled_models) -> None:
    """The C the image links: every table const (flash), each tensor at a link-time address."""
    art = compiled_models.get("multi_io", "x86_64")
    built = prebuild(3, art.graph_json, art.params_bin, art.workspace_bytes, "multi_io_")
    src = built.c_source
    for decl in ("static const int64_t fw_dims3[]", "static const minrt_entry fw_ent3[]",
                 "static const TVMFFIAny fw_args3[]", "static const minrt_node fw_nodes3[]",
                 "static DLTensor *const fw_inputs3[]", "static DLTensor *const fw_outputs3[]",
                 "static const minrt fw_model3 = {"):
        assert decl in src, decl
    assert ".data = fw_arena + " in src and "(void *)(fw_params3 + " in src
    assert "extern int __tvm_ffi_multi_io_" in src  # each node calls its kernel by its symbol
    n_inputs = len(art.inputs)
    assert f".n_inputs = {n_inputs}u" in src and n_inputs >= 2


def test_a_param_not_aligned_is_refused(compiled_models, tmp_path) -> None:
    """Params are used in place from flash: a blob whose data is not 64-byte aligned (TVM's own
    NDArray-list) cannot be laid out, and the build says which param."""
    art = compiled_models.get("mlp", "x86_64")
    graph = json.loads(art.graph_json.read_text())
    plain = tmp_path / "params.bin"
    tensorfile.save(plain, tensorfile.loads(art.params_bin.read_bytes()), aligned=False)
    offsets = tensorfile.data_offsets(plain.read_bytes())
    assert any(v % 64 for v in offsets.values())
    with pytest.raises(BuildError, match="not 64-byte aligned"):
        layout(graph, offsets, art.workspace_bytes, str(plain))
