/* models.h: the models an image holds, written by harness/build/firmware.py into models.c.
 * Weights live in flash (section .minrt_model, 64-byte aligned, used in place); the arena is
 * static, sized at build time for the largest model. The real image's models are laid out at
 * build time (harness/build/prebuilt.py): minrt's tables are constants in flash whose tensors
 * point into the arena, which holds only the storages and the workspace. The probe image holds
 * each graph.json and loads it with minrt_load (checking every node against its kernel). The
 * arena's last fw_tail_bytes receive the inputs blob, then after a run the outputs: the builder
 * keeps that tail clear of every model's inputs and outputs. */
#ifndef MINRT_FW_MODELS_H
#define MINRT_FW_MODELS_H

#include <stdint.h>

#include "minrt.h"

struct fw_model {
  uint8_t sha256[32];        /* of graph.json: the host selects the model by it */
  const minrt *model;        /* laid out at build time, its tables in flash: RUN copies this
                                struct (the only part minrt writes) and runs it; 0 in the probe */
#ifdef FW_PROBE
  minrt_artifact artifact;   /* graph.json (NUL-terminated) and params.bin in flash, the
                                metadata's workspace_bytes, its kernels_sig.c table */
#endif
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
