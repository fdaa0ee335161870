/* edgec shim: the few TVM backend functions that TVM-generated kernels call, without a runtime.
 *
 * - TVMBackendAllocWorkspace / FreeWorkspace: a bump allocator inside the region of the caller's
 *   arena that the memory planner reserved for the running kernel (no malloc, ever).
 * - TVMBackendParallelLaunch: runs the parallel lambda serially as task 0 of 1.
 * - TVMFFIErrorSetRaised*: forwards kernel errors to edgec_error_hook.
 * - TVMFFIEnvModRegisterSystemLibSymbol: system-library registration is not needed (the entry
 *   point calls kernels directly), so it is accepted and ignored.
 *
 * Every definition is weak: each model library carries the same shim, and two models linked into
 * one firmware must not clash. The workspace cursor is the only mutable state; it is
 * thread-local where the platform has threads, so concurrent calls with separate arenas work.
 */
#include "edgec_runtime.h"

#define EDGEC_WEAK __attribute__((weak))
#define EDGEC_WORKSPACE_ALIGN 16u

#if defined(__linux__) && defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define EDGEC_THREAD_LOCAL _Thread_local
#else
#define EDGEC_THREAD_LOCAL
#endif

typedef struct {
  uint8_t *base;
  uint32_t bytes;
  uint32_t used;
} edgec_workspace_t;

static EDGEC_THREAD_LOCAL edgec_workspace_t edgec_workspace;

typedef struct {
  void *sync_handle;
  int32_t num_task;
} edgec_parallel_env_t;

typedef int (*edgec_parallel_lambda)(int task_id, edgec_parallel_env_t *penv, void *cdata);

EDGEC_WEAK void edgec_error_hook(const char *kind, const char *message) {
  (void)kind;
  (void)message;
}

EDGEC_WEAK void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                                          int dtype_code_hint, int dtype_bits_hint) {
  (void)device_type;
  (void)device_id;
  (void)dtype_code_hint;
  (void)dtype_bits_hint;
  uint64_t size = (nbytes + EDGEC_WORKSPACE_ALIGN - 1u) & ~(uint64_t)(EDGEC_WORKSPACE_ALIGN - 1u);
  if (edgec_workspace.base == NULL || (uint64_t)edgec_workspace.used + size > edgec_workspace.bytes) {
    edgec_error_hook("MemoryError", "edgec: kernel workspace exceeds the planned region");
    return NULL;
  }
  void *ptr = edgec_workspace.base + edgec_workspace.used;
  edgec_workspace.used += (uint32_t)size;
  return ptr;
}

EDGEC_WEAK int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr) {
  (void)device_type;
  (void)device_id;
  /* Kernels free in reverse order of allocation, so freeing rewinds the cursor to ptr. */
  uint8_t *p = (uint8_t *)ptr;
  if (p >= edgec_workspace.base && p < edgec_workspace.base + edgec_workspace.used) {
    edgec_workspace.used = (uint32_t)(p - edgec_workspace.base);
  }
  return 0;
}

EDGEC_WEAK int TVMBackendParallelLaunch(edgec_parallel_lambda flambda, void *cdata, int num_task) {
  (void)num_task;
  edgec_parallel_env_t env = {NULL, 1};
  return flambda(0, &env, cdata);
}

EDGEC_WEAK int TVMBackendParallelBarrier(int task_id, edgec_parallel_env_t *penv) {
  (void)task_id;
  (void)penv;
  return 0;
}

EDGEC_WEAK void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *message) {
  edgec_error_hook(kind, message);
}

EDGEC_WEAK void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t num_parts) {
  edgec_error_hook(kind, num_parts > 0 ? parts[0] : "");
}

EDGEC_WEAK int TVMFFIEnvModRegisterSystemLibSymbol(const char *name, void *symbol) {
  (void)name;
  (void)symbol;
  return 0;
}

EDGEC_WEAK int edgec_run_steps(const edgec_model_t *model, const void *const *inputs, void *const *outputs,
                               uint8_t *arena, edgec_dltensor_t *tensors, edgec_any_t *values) {
  for (uint32_t s = 0; s < model->num_steps; ++s) {
    const edgec_step_t *step = &model->steps[s];
    for (uint32_t i = 0; i < step->num_args; ++i) {
      const edgec_arg_t *arg = &model->args[step->first_arg + i];
      const edgec_desc_t *desc = &model->descs[arg->desc];
      void *data;
      switch (arg->kind) {
        case EDGEC_IN_INPUT:
          data = (void *)inputs[arg->where];
          break;
        case EDGEC_IN_OUTPUT:
          data = outputs[arg->where];
          break;
        case EDGEC_IN_CONST:
          data = (void *)model->constants[arg->where];
          break;
        default:
          data = arena + arg->where;
          break;
      }
      edgec_dltensor_t *t = &tensors[i];
      t->data = data;
      t->device.device_type = 1;
      t->device.device_id = 0;
      t->ndim = desc->ndim;
      t->dtype.code = desc->code;
      t->dtype.bits = desc->bits;
      t->dtype.lanes = 1;
      t->shape = (int64_t *)desc->shape; /* kernels only read shapes */
      t->strides = NULL;
      t->byte_offset = 0;
      values[i].type_index = 7; /* kTVMFFIDLTensorPtr */
      values[i].zero_padding = 0;
      values[i].value.v_ptr = t;
    }
    edgec_workspace.base = step->workspace_bytes ? arena + step->workspace_offset : NULL;
    edgec_workspace.bytes = step->workspace_bytes;
    edgec_workspace.used = 0;
    edgec_any_t result;
    result.type_index = 0;
    result.zero_padding = 0;
    result.value.v_int64 = 0;
    int rc = step->fn(NULL, values, (int32_t)step->num_args, &result);
    edgec_workspace.base = NULL;
    edgec_workspace.bytes = 0;
    if (rc != 0) {
      return (int)s + 1;
    }
  }
  return 0;
}
