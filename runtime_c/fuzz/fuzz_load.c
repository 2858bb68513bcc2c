/* libFuzzer target for minrt_load: input = u32 graph length (little-endian), graph.json
 * bytes, params.bin bytes. Loads into a fixed arena with every test kernel registered;
 * a model that loads is run once (the kernels check what they are handed). */
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "minrt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static unsigned char arena[1 << 18] __attribute__((aligned(64)));
  static int registered;
  minrt_artifact a;
  minrt_err err;
  minrt *m;
  size_t need, glen;
  uint32_t n;
  if (!registered) register_test_kernels(), registered = 1;
  if (size < 4) return 0;
  memcpy(&n, data, 4);
  glen = n < size - 4 ? n : size - 4;
  memset(&a, 0, sizeof a);
  a.graph_json = (const char *)data + 4;
  a.graph_len = glen;
  a.params = data + 4 + glen;
  a.params_len = size - 4 - glen;
  a.workspace_bytes = 4096;
  if (minrt_load(&m, &a, arena, sizeof arena, &need, &err) == 0) {
    int i;
    for (i = 0; i < minrt_num_inputs(m); i++) {
      const DLTensor *t = minrt_input(m, i);
      memset(t->data, 0, minrt_nbytes(t));
    }
    minrt_run(m);
  } else if (!err.msg[0]) {
    __builtin_trap(); /* every failure has a message */
  }
  return 0;
}
