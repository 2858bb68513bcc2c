/* models.h: the models an image holds, written by harness/build/firmware.py into models.c.
 * Graph and params live in flash (section .minrt_model, 64-byte aligned, used in place);
 * the arena is static, sized at build time for the largest model. Its last fw_tail_bytes
 * receive the inputs blob, then after a run the outputs: the builder keeps that tail clear of
 * every model's parsed graph, inputs and outputs. */
#ifndef MINRT_FW_MODELS_H
#define MINRT_FW_MODELS_H

#include <stdint.h>

#include "minrt.h"

struct fw_model {
  uint8_t sha256[32];        /* of graph.json: the host selects the model by it */
  minrt_artifact artifact;   /* graph.json (NUL-terminated) and params.bin in flash, the
                                metadata's workspace_bytes, its kernels_sig.c table */
};

extern const struct fw_model fw_models[];
extern const uint32_t fw_n_models;
extern uint8_t fw_arena[];
extern const uint32_t fw_arena_bytes;
extern const uint32_t fw_tail_bytes;
extern uint8_t fw_tail[]; /* fw_arena + fw_arena_bytes - fw_tail_bytes, a link-time address */
#define fw_inputs fw_tail
#define fw_outputs fw_tail

#endif
