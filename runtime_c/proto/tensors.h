/* tensors.h: TVM's NDArray-list blob (harness/formats/tensorfile.py), read into a model's
 * inputs and written from its outputs, shared by minrt-run (runner/runner.c) and the firmware
 * front end (firmware/frontend.c). No allocation; every length is checked against the blob.
 *
 * Layout (little-endian): u64 magic, u64 reserved, u64 name count, names (u64 len + bytes),
 * u64 tensor count, then per tensor: u64 magic, u64 reserved, DLDevice {i32, i32}, i32 ndim,
 * DLDataType {u8 code, u8 bits, u16 lanes}, ndim x i64 shape, i64 nbytes, data. */
#ifndef MINRT_PROTO_TENSORS_H
#define MINRT_PROTO_TENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "minrt.h"

/* What is wrong with an inputs blob (frames.py's ErrorCode holds the texts, as
 * FRAME_E_INPUTS + code). */
enum tensors_error {
  TENSORS_E_LIST = 1,      /* not an NDArray-list */
  TENSORS_E_COUNT = 2,     /* not one tensor per graph input */
  TENSORS_E_NAME = 3,      /* truncated name */
  TENSORS_E_UNKNOWN = 4,   /* a name that is no graph input */
  TENSORS_E_TWICE = 5,     /* an input given twice */
  TENSORS_E_HEADER = 6,    /* bad tensor header */
  TENSORS_E_DTYPE = 7,     /* dtype/ndim differ from the graph input */
  TENSORS_E_SHAPE = 8,     /* shape differs from the graph input, or is truncated */
  TENSORS_E_DATA = 9,      /* bad nbytes or truncated data */
  TENSORS_E_TRAILING = 10, /* bytes after the last tensor */
  TENSORS_E_SET = 11       /* minrt refused the data */
};

/* Sets every graph input of m from the blob: each named once, dtype, ndim and shape as the
 * graph says. 0, or a TENSORS_E_* code with *at the byte offset where the fault lies. */
int tensors_set_inputs(minrt *m, const uint8_t *blob, size_t len, size_t *at);

/* The name of output i: "output" and i in decimal. Returns its length (buf holds 16). */
size_t tensors_output_name(char *buf, unsigned i);

/* Writes m's outputs as an NDArray-list named by tensors_output_name into buf when the blob
 * fits in cap bytes; returns the blob's size either way. */
size_t tensors_write_outputs(const minrt *m, uint8_t *buf, size_t cap);

/* A TENSORS_E_* code as text ("" when built with MINRT_NO_MESSAGES). */
const char *tensors_error_text(int code);

#endif
