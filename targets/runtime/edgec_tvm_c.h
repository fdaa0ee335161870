/* The few TVM/DLPack declarations that TVM's C code generator (target "c") uses, so that its
 * kernels compile with any C99 compiler without TVM's headers. Layouts match DLPack's DLTensor
 * and TVM FFI's TVMFFIAny; edgec replaces the generated #include lines with this header. */
#ifndef EDGEC_TVM_C_H_
#define EDGEC_TVM_C_H_

#include <stddef.h>
#include <stdint.h>

#define TVM_DLL

typedef struct {
  int32_t device_type;
  int32_t device_id;
} DLDevice;

typedef struct {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
} DLDataType;

typedef struct {
  void *data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t *shape;
  int64_t *strides;
  uint64_t byte_offset;
} DLTensor;

typedef struct {
  int32_t type_index;
  uint32_t zero_padding;
  union {
    int64_t v_int64;
    double v_float64;
    void *v_ptr;
  };
} TVMFFIAny;

typedef struct {
  void *sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;

typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv *penv, void *cdata);

void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                               int dtype_bits_hint);
int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr);
int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void *cdata, int num_task);
int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv *penv);
void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *message);
int TVMFFIEnvModRegisterSystemLibSymbol(const char *name, void *symbol);

#endif /* EDGEC_TVM_C_H_ */
