/* The board side of edgec's TVM RPC server (edgec.targets.rpc_server): serves one RPC session on
 * a socket that the host-side server accepted and handed over, with TVM's own runtime
 * (libtvm_runtime.so from the board's TVM wheel) doing the protocol.
 *
 *     edgec_rpc_server FD WORKDIR
 *
 * TVM's C++ runtime implements the session ("rpc.ServerLoop") and the file transfers
 * ("tvm.rpc.server.upload"...), but leaves two functions to the host language (tvm/rpc/server.py
 * registers them in Python): where uploaded files go, and how an uploaded library is loaded. A
 * board has no Python, so this program registers them through the tvm-ffi C API. It links
 * libtvm_runtime_extra.so for "tvm.contrib.random.random_fill_for_measure", which MetaSchedule's
 * RPC runner calls to fill the arguments it times kernels with.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tvm/ffi/c_api.h>

static const char *workdir;

static TVMFFIByteArray bytes_of(const char *text) {
  TVMFFIByteArray bytes = {text, strlen(text)};
  return bytes;
}

/* The file name argument of the server functions, as a NUL-terminated path under workdir. */
static int path_in_workdir(const TVMFFIAny *arg, char *path, size_t capacity) {
  const char *data;
  size_t size;
  if (arg->type_index == kTVMFFISmallStr) {
    data = arg->v_bytes;
    size = arg->small_str_len;
  } else if (arg->type_index == kTVMFFIStr) {
    /* A string object is its header followed by the bytes' address and length. */
    const TVMFFIByteArray *cell = (const TVMFFIByteArray *)(arg->v_obj + 1);
    data = cell->data;
    size = cell->size;
  } else if (arg->type_index == kTVMFFIRawStr) {
    data = arg->v_c_str;
    size = strlen(data);
  } else {
    TVMFFIErrorSetRaisedFromCStr("TypeError", "edgec_rpc_server: expected a file name");
    return -1;
  }
  if (memchr(data, '/', size) != NULL || strlen(workdir) + size + 2 > capacity) {
    /* Files stay in this session's folder: the client names files, never paths. */
    TVMFFIErrorSetRaisedFromCStr("ValueError", "edgec_rpc_server: file names only, no folders");
    return -1;
  }
  snprintf(path, capacity, "%s/%.*s", workdir, (int)size, data);
  return 0;
}

static int workpath(void *self, const TVMFFIAny *args, int32_t num_args, TVMFFIAny *result) {
  char path[4096];
  (void)self;
  if (num_args != 1 || path_in_workdir(&args[0], path, sizeof path) != 0) return -1;
  TVMFFIByteArray text = bytes_of(path);
  return TVMFFIStringFromByteArray(&text, result);
}

static int load_module(void *self, const TVMFFIAny *args, int32_t num_args, TVMFFIAny *result) {
  char path[4096];
  TVMFFIObjectHandle loader = NULL;
  TVMFFIByteArray name = bytes_of("ffi.ModuleLoadFromFile");
  (void)self;
  if (num_args != 1 || path_in_workdir(&args[0], path, sizeof path) != 0) return -1;
  if (TVMFFIFunctionGetGlobal(&name, &loader) != 0 || loader == NULL) {
    TVMFFIErrorSetRaisedFromCStr("RuntimeError", "edgec_rpc_server: no ffi.ModuleLoadFromFile");
    return -1;
  }
  TVMFFIAny arg = {0};
  arg.type_index = kTVMFFIRawStr;
  arg.v_c_str = path;
  int status = TVMFFIFunctionCall(loader, &arg, 1, result);
  TVMFFIObjectDecRef(loader);
  return status;
}

static int register_global(const char *name, TVMFFISafeCallType call) {
  TVMFFIObjectHandle function = NULL;
  TVMFFIByteArray key = bytes_of(name);
  if (TVMFFIFunctionCreate(NULL, call, NULL, &function) != 0) return -1;
  int status = TVMFFIFunctionSetGlobal(&key, function, 1);
  TVMFFIObjectDecRef(function);
  return status;
}

/* The message of the error the last failed call raised, on stderr (the host server logs it). */
static int report_error(const char *what) {
  TVMFFIObjectHandle error = NULL;
  TVMFFIErrorMoveFromRaised(&error);
  fprintf(stderr, "edgec_rpc_server: %s failed\n", what);
  if (error != NULL) {
    const TVMFFIErrorCell *cell = (const TVMFFIErrorCell *)((TVMFFIObject *)error + 1);
    fprintf(stderr, "%.*s: %.*s\n", (int)cell->kind.size, cell->kind.data, (int)cell->message.size,
            cell->message.data);
    TVMFFIObjectDecRef(error);
  }
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s SOCKET_FD WORKDIR\n", argv[0]);
    return 2;
  }
  workdir = argv[2];
  if (register_global("tvm.rpc.server.workpath", workpath) != 0) return report_error("workpath");
  if (register_global("tvm.rpc.server.load_module", load_module) != 0) return report_error("load_module");
  TVMFFIObjectHandle loop = NULL;
  TVMFFIByteArray name = bytes_of("rpc.ServerLoop");
  if (TVMFFIFunctionGetGlobal(&name, &loop) != 0 || loop == NULL) return report_error("rpc.ServerLoop");
  TVMFFIAny fd = {0};
  fd.type_index = kTVMFFIInt;
  fd.v_int64 = strtol(argv[1], NULL, 10);
  TVMFFIAny done = {0};
  done.type_index = kTVMFFINone;
  if (TVMFFIFunctionCall(loop, &fd, 1, &done) != 0) return report_error("the session");
  return 0;
}
