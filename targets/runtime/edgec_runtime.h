/* edgec runtime-free model support: the types the generated <name>.c tables use.
 *
 * The layouts of edgec_dltensor_t and edgec_any_t are those of DLPack's DLTensor and TVM FFI's
 * TVMFFIAny, which TVM-generated kernels read; edgec keeps its own names so that a firmware that
 * also includes dlpack.h or TVM headers has no clashes. No malloc, no stdio.
 */
#ifndef EDGEC_RUNTIME_H_
#define EDGEC_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int32_t device_type; /* 1 = CPU */
  int32_t device_id;
} edgec_device_t;

typedef struct {
  uint8_t code; /* 0 int, 1 uint, 2 float, 4 bfloat, 6 bool */
  uint8_t bits;
  uint16_t lanes;
} edgec_dtype_t;

typedef struct {
  void *data;
  edgec_device_t device;
  int32_t ndim;
  edgec_dtype_t dtype;
  int64_t *shape;
  int64_t *strides;
  uint64_t byte_offset;
} edgec_dltensor_t;

typedef struct {
  int32_t type_index; /* 7 = DLTensor pointer */
  uint32_t zero_padding;
  union {
    int64_t v_int64;
    void *v_ptr;
    double v_float64;
  } value;
} edgec_any_t;

/* The packed-call ABI of every TVM kernel: int f(self, args, num_args, result). */
typedef int (*edgec_kernel_fn)(void *self, const edgec_any_t *args, int32_t num_args, edgec_any_t *result);

/* A tensor's static description (lives in flash). */
typedef struct {
  const int64_t *shape;
  uint8_t ndim;
  uint8_t code;
  uint8_t bits;
  uint8_t reserved;
} edgec_desc_t;

enum { EDGEC_IN_ARENA = 0, EDGEC_IN_INPUT = 1, EDGEC_IN_OUTPUT = 2, EDGEC_IN_CONST = 3 };

/* One kernel argument: which descriptor, and where its data is (arena offset or an index). */
typedef struct {
  uint32_t where;
  uint16_t desc;
  uint8_t kind;
  uint8_t reserved;
} edgec_arg_t;

/* One kernel call: its arguments are args[first_arg .. first_arg + num_args). */
typedef struct {
  edgec_kernel_fn fn;
  uint32_t workspace_offset;
  uint32_t workspace_bytes;
  uint16_t first_arg;
  uint16_t num_args;
} edgec_step_t;

/* Everything edgec_run_steps needs to know about one model (all const, all in flash). */
typedef struct {
  const edgec_step_t *steps;
  const edgec_arg_t *args;
  const edgec_desc_t *descs;
  const void *const *constants;
  uint32_t num_steps;
  uint32_t max_args;
} edgec_model_t;

/* Runs the steps of a model; `scratch` holds max_args tensors and values (caller's stack).
 * Returns 0, or the 1-based index of the first step whose kernel failed. */
int edgec_run_steps(const edgec_model_t *model, const void *const *inputs, void *const *outputs,
                    uint8_t *arena, edgec_dltensor_t *tensors, edgec_any_t *values);

/* Called with a kernel's error kind and message when it fails (default: does nothing).
 * Define your own (a strong symbol) to log or trap. */
void edgec_error_hook(const char *kind, const char *message);

#ifdef __cplusplus
}
#endif

#endif /* EDGEC_RUNTIME_H_ */
