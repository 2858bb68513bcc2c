/* serial.h: `minrt-run --serial [DEVICE]`, the runner's framed protocol over a console line.
 *
 * The host sends a model (graph.json, params.bin, inputs) in checksummed frames, asks for a
 * run, and reads the outputs back; the protocol is described at the top of serial.c and in
 * harness/formats/frames.py; proto/frame.h holds the frame codec. The protocol knows nothing about minrt itself: serial_main takes a
 * function that runs one job from memory buffers; runner_serial_main passes the runner's.
 */
#ifndef MINRT_RUNNER_SERIAL_H
#define MINRT_RUNNER_SERIAL_H

#include <stddef.h>
#include <stdint.h>

/* One RUN request: every buffer stays valid until the next request. */
struct serial_job {
  const char *graph_json;       /* NUL-terminated */
  size_t graph_len;             /* without the NUL */
  const uint8_t *params;        /* 64-byte aligned */
  size_t params_len;
  const uint8_t *inputs;        /* 64-byte aligned, NDArray-list named by graph inputs */
  size_t inputs_len;
  uint32_t iters;
  uint32_t workspace;           /* kernel workspace bytes (metadata's workspace_bytes) */
};

/* What a run gives back. `outputs` is malloc'ed by the run function and freed by serial.c. */
struct serial_result {
  uint8_t *outputs;             /* NDArray-list, tensors named output0, output1, ... */
  size_t outputs_len;
  char timing[384];             /* the JSON line the runner prints in file mode */
  char error[256];              /* "<step>: <message>" when the run fails */
  int code;                     /* and its FRAME_E_* code (proto/frame.h) */
};

/* Returns 0 on success, the runner's exit code (1 load/input, 3 run) with res->error set
 * otherwise. */
typedef int (*serial_run_fn)(const struct serial_job *job, struct serial_result *res);

/* The runner's exit status when the host sent BYE while a RUN executed (it gave up on the
 * run: Ctrl-C on the host): 128 + SIGINT, as if interrupted. */
#define SERIAL_EXIT_ABORTED 130

/* Serve requests on in_fd/out_fd until the host says BYE (returns 0) or the link fails or
 * stays silent for the idle timeout (returns 1). Does not touch terminal settings. */
int serial_serve(int in_fd, int out_fd, serial_run_fn run);

/* The `--serial [DEVICE]` entry point: opens DEVICE (or uses stdin/stdout), puts a terminal
 * into raw mode, serves, and restores the terminal on every exit path (signals included). */
int serial_main(const char *device, serial_run_fn run);

/* `minrt-run --serial [DEVICE]`: serial_main with the runner's steps (runner.h). */
int runner_serial_main(int argc, char **argv);

#endif
