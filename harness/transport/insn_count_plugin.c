/* A QEMU TCG plugin (qemu-user, plugin API version 1 as in QEMU 7.2): counts the guest
 * instructions a program executes and writes the count, as decimal digits and a newline, to
 * the file descriptor given as fd=N (QemuUserTransport.count_instructions).
 *
 * Each translated block adds its instruction count to one 64-bit counter, inline (no call
 * per block): exact for blocks that run to their end, which every block does in a user-mode
 * program that exits normally (a system call ends its block). Debian ships QEMU with plugin
 * support but without its example plugins; the few declarations below are the plugin ABI's
 * (qemu-plugin.h is not packaged either). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
typedef struct qemu_info_t qemu_info_t; /* not read */
enum { INLINE_ADD_U64 = 0 };            /* enum qemu_plugin_op */

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
                                           void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, int op, void *ptr,
                                              uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, void *),
                                    void *userdata);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

static uint64_t executed;
static int out_fd = -1;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  qemu_plugin_register_vcpu_tb_exec_inline(tb, INLINE_ADD_U64, &executed,
                                           qemu_plugin_tb_n_insns(tb));
}

static void on_exit(qemu_plugin_id_t id, void *userdata) {
  char line[32];
  int n;
  (void)id;
  (void)userdata;
  n = snprintf(line, sizeof line, "%llu\n", (unsigned long long)executed);
  if (out_fd >= 0 && n > 0 && write(out_fd, line, (size_t)n) != n) _exit(125);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                                const qemu_info_t *info,
                                                                int argc, char **argv) {
  int i;
  (void)info;
  for (i = 0; i < argc; i++)
    if (!strncmp(argv[i], "fd=", 3)) out_fd = atoi(argv[i] + 3);
  if (out_fd < 0) return -1; /* nowhere to report: QEMU refuses to start */
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, on_exit, NULL);
  return 0;
}
