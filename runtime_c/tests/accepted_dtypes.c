/* accepted_dtypes NAME...: for each dtype name, whether minrt loads a graph whose one input
 * has that dtype, as "NAME CODE BITS LANES" (the DLDataType minrt gives the input) or
 * "NAME refused: MESSAGE". tests/test_runtime_c.py holds harness/formats/dtypes.py against it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "minrt.h"

static const char graph_format[] =
    "{\"nodes\": [{\"op\": \"null\", \"name\": \"x\", \"inputs\": []}], \"arg_nodes\": [0],"
    " \"heads\": [[0, 0, 0]], \"node_row_ptr\": [0, 1], \"attrs\": {"
    "\"dltype\": [\"list_str\", [\"%s\"]], \"storage_id\": [\"list_int\", [0]],"
    " \"shape\": [\"list_shape\", [[2]]]}}";

int main(int argc, char **argv) {
  static _Alignas(64) unsigned char arena[4096];
  char graph[512];
  int i;
  for (i = 1; i < argc; i++) {
    minrt_artifact a;
    minrt *m;
    minrt_err err;
    size_t need = 0;
    const DLTensor *x;
    int n = snprintf(graph, sizeof graph, graph_format, argv[i]);
    if (n < 0 || (size_t)n >= sizeof graph) return 2;
    memset(&a, 0, sizeof a);
    a.graph_json = graph;
    a.graph_len = (size_t)n;
    if (minrt_load(&m, &a, arena, sizeof arena, &need, &err)) {
      printf("%s refused: %s\n", argv[i], err.msg);
      continue;
    }
    x = minrt_input(m, 0);
    printf("%s %u %u %u\n", argv[i], x->dtype.code, x->dtype.bits, x->dtype.lanes);
  }
  return 0;
}
