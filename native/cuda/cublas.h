// cuBLAS, loaded at run time: the project builds where only the CUDA compiler and
// runtime exist (no cuBLAS headers or libraries), and the plugin loads on a machine that
// has cuBLAS (a CUDA toolkit, or PyTorch's nvidia-cublas wheel) without being linked to
// it. Only the few entry points we call are declared, with the ABI of cublas_api.h.
#pragma once
#include <cuda_runtime_api.h>

#include <string>

namespace eigenlorax::cuda {

using CublasHandle = struct CublasContext*;  // cublasHandle_t: an opaque pointer
// cublasOperation_t, cublasMath_t values from cublas_api.h.
enum : int { kCublasOpN = 0, kCublasOpT = 1 };
enum : int { kCublasDefaultMath = 0, kCublasPedanticMath = 2 };

struct CublasApi {
  int (*create)(CublasHandle*);
  int (*destroy)(CublasHandle);
  int (*setStream)(CublasHandle, cudaStream_t);
  int (*getVersion)(CublasHandle, int*);
  int (*setMathMode)(CublasHandle, int);
  int (*sgemm)(CublasHandle, int, int, int, int, int, const float*, const float*, int, const float*, int,
               const float*, float*, int);
  int (*dgemm)(CublasHandle, int, int, int, int, int, const double*, const double*, int, const double*, int,
               const double*, double*, int);
  std::string library;  // the path or name that was loaded
};

// Loads cuBLAS once: $EIGENLORAX_CUBLAS (a file) if set, else libcublas.so.13, .so.12,
// .so on the loader's path. Returns null and sets `why` when none loads.
const CublasApi* loadCublas(std::string& why);

// cublasStatus_t as text.
std::string cublasStatusName(int status);

}  // namespace eigenlorax::cuda
