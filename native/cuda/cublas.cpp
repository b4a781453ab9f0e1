#include "cublas.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

namespace eigenlorax::cuda {
namespace {

template <typename Fn>
bool resolve(void* library, const char* symbol, Fn& out, std::string& missing) {
  out = reinterpret_cast<Fn>(dlsym(library, symbol));
  if (out == nullptr) missing += (missing.empty() ? "" : ", ") + std::string(symbol);
  return out != nullptr;
}

const CublasApi* loadOnce(std::string& why) {
  std::vector<std::string> candidates;
  if (const char* path = std::getenv("EIGENLORAX_CUBLAS"); path != nullptr && *path != '\0') {
    candidates.emplace_back(path);
  } else {
    candidates = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
  }
  std::string errors;
  for (const std::string& name : candidates) {
    void* library = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr) {
      const char* error = dlerror();
      errors += (errors.empty() ? "" : "; ") + (error != nullptr ? std::string(error) : name);
      continue;
    }
    static CublasApi api;
    std::string missing;
    resolve(library, "cublasCreate_v2", api.create, missing);
    resolve(library, "cublasDestroy_v2", api.destroy, missing);
    resolve(library, "cublasSetStream_v2", api.setStream, missing);
    resolve(library, "cublasGetVersion_v2", api.getVersion, missing);
    resolve(library, "cublasSetMathMode", api.setMathMode, missing);
    resolve(library, "cublasSgemm_v2", api.sgemm, missing);
    resolve(library, "cublasDgemm_v2", api.dgemm, missing);
    if (!missing.empty()) {
      errors += (errors.empty() ? "" : "; ") + name + " lacks " + missing;
      dlclose(library);
      continue;
    }
    api.library = name;
    return &api;
  }
  why = "cuBLAS could not be loaded (" + errors +
        "); install the CUDA toolkit's cuBLAS or set EIGENLORAX_CUBLAS to libcublas.so.*";
  return nullptr;
}

}  // namespace

const CublasApi* loadCublas(std::string& why) {
  static std::once_flag once;
  static const CublasApi* api = nullptr;
  static std::string reason;
  std::call_once(once, [] { api = loadOnce(reason); });
  if (api == nullptr) why = reason;
  return api;
}

std::string cublasStatusName(int status) {
  switch (status) {
    case 0: return "CUBLAS_STATUS_SUCCESS";
    case 1: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case 3: return "CUBLAS_STATUS_ALLOC_FAILED";
    case 7: return "CUBLAS_STATUS_INVALID_VALUE";
    case 8: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case 11: return "CUBLAS_STATUS_MAPPING_ERROR";
    case 13: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case 14: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case 15: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case 16: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "cuBLAS status " + std::to_string(status);
  }
}

}  // namespace eigenlorax::cuda
