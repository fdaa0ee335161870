/* Counts executed guest instructions in qemu-system-* (TCG plugin API, QEMU_PLUGIN_VERSION 1,
 * as in QEMU 7.2). Debian ships no qemu-plugin.h, so the few declarations used are written out
 * here from the documented API. Each translated block gets an inline "add its instruction count"
 * op, which costs nothing per instruction; at exit the total is printed (load with
 * `-plugin ./libinsn_count.so -d plugin`; the line goes to qemu's log, stderr by default):
 *     edgec-insn-count: <N>
 * With `-plugin ./libinsn_count.so,lo=<addr>,hi=<addr>` only blocks starting in [lo, hi) count
 * (one function of the image, from its symbol table). Build: gcc -shared -fPIC -O2 -o
 * libinsn_count.so insn_count.c */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through */
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

static uint64_t executed; /* one vCPU on the MPS2 boards: no atomics needed */
static uint64_t lo = 0, hi = UINT64_MAX;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  uint64_t pc = qemu_plugin_tb_vaddr(tb);
  (void)id;
  if (pc < lo || pc >= hi) return;
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed,
                                           qemu_plugin_tb_n_insns(tb));
}

static void print_total(qemu_plugin_id_t id, void *userdata) {
  char line[64];
  (void)id;
  (void)userdata;
  snprintf(line, sizeof line, "edgec-insn-count: %" PRIu64 "\n", executed);
  qemu_plugin_outs(line);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                                int argc, char **argv) {
  (void)info;
  for (int i = 0; i < argc; ++i) {
    if (strncmp(argv[i], "lo=", 3) == 0) lo = strtoull(argv[i] + 3, NULL, 0);
    if (strncmp(argv[i], "hi=", 3) == 0) hi = strtoull(argv[i] + 3, NULL, 0);
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, print_total, NULL);
  return 0;
}
