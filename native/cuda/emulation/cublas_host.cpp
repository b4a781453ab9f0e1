// libcublas_emulated.so: the cuBLAS entry points the backend loads (cublas.h), with the
// ABI of cublas_api.h and the semantics of the cuBLAS documentation, computed on the CPU:
//   C = alpha op(A) op(B) + beta C, all COLUMN-major; op(A) is m x k, op(B) k x n, C m x n;
//   A is stored lda x (k if transa == N, else m), B ldb x (n if transb == N, else k).
// Arguments are validated as cuBLAS does (CUBLAS_STATUS_INVALID_VALUE). This follows the
// documentation, not the backend's calls, so that a wrong operand order or leading
// dimension in the backend shows up as a wrong result or an error.
//
// Loaded through EIGENLORAX_CUBLAS. When the program exports the emulated runtime's
// eigenlorax_emulated_device_bytes, every matrix must also lie in device memory, as
// cuBLAS's kernels need (else CUBLAS_STATUS_EXECUTION_FAILED, said on stderr).
#include <dlfcn.h>

#include <Eigen/Core>
#include <algorithm>
#include <cstdio>

namespace {

enum : int {
  kSuccess = 0,
  kNotInitialized = 1,
  kInvalidValue = 7,
  kExecutionFailed = 13,
};
enum : int { kOpN = 0, kOpT = 1, kOpC = 2 };
constexpr int kDisallowReducedPrecisionReduction = 16;

using DeviceBytes = size_t (*)(const void*);

struct Handle {
  DeviceBytes deviceBytes = nullptr;
};

// Column-major rows x cols with leading dimension ld: whether all of it is device memory.
template <typename T>
bool onDevice(const Handle& h, const T* p, int rows, int cols, int ld, const char* what) {
  if (h.deviceBytes == nullptr || rows == 0 || cols == 0) return true;
  const size_t bytes = (static_cast<size_t>(cols - 1) * static_cast<size_t>(ld) + static_cast<size_t>(rows)) * sizeof(T);
  if (h.deviceBytes(p) >= bytes) return true;
  std::fprintf(stderr, "emulated cuBLAS: %s (%d x %d, ld %d, %zu bytes at %p) is not in device memory\n", what, rows,
               cols, ld, bytes, static_cast<const void*>(p));
  return false;
}

template <typename T>
int gemm(void* handle, int transa, int transb, int m, int n, int k, const T* alpha, const T* A, int lda, const T* B,
         int ldb, const T* beta, T* C, int ldc) {
  if (handle == nullptr) return kNotInitialized;
  const auto validOp = [](int op) { return op == kOpN || op == kOpT || op == kOpC; };
  if (!validOp(transa) || !validOp(transb) || m < 0 || n < 0 || k < 0) return kInvalidValue;
  const bool ta = transa != kOpN, tb = transb != kOpN;  // OP_C is OP_T for real types
  const int aRows = ta ? k : m, aCols = ta ? m : k, bRows = tb ? n : k, bCols = tb ? k : n;
  if (lda < std::max(1, aRows) || ldb < std::max(1, bRows) || ldc < std::max(1, m)) return kInvalidValue;
  if (alpha == nullptr || beta == nullptr) return kInvalidValue;
  if (m == 0 || n == 0) return kSuccess;
  const T a0 = *alpha, b0 = *beta;
  if ((a0 == T(0) || k == 0) && b0 == T(1)) return kSuccess;

  const Handle& h = *static_cast<const Handle*>(handle);
  const bool readsAB = a0 != T(0) && k > 0;
  if ((readsAB && (!onDevice(h, A, aRows, aCols, lda, "A") || !onDevice(h, B, bRows, bCols, ldb, "B"))) ||
      !onDevice(h, C, m, n, ldc, "C")) {
    return kExecutionFailed;
  }
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
  using Stride = Eigen::OuterStride<>;
  Eigen::Map<Mat, 0, Stride> c(C, m, n, Stride(ldc));
  // beta == 0: C is output only; whatever it held (NaN too) must not leak in.
  if (b0 == T(0)) c.setZero();
  else if (b0 != T(1)) c *= b0;
  if (!readsAB) return kSuccess;
  const Eigen::Map<const Mat, 0, Stride> a(A, aRows, aCols, Stride(lda)), b(B, bRows, bCols, Stride(ldb));
  const auto add = [&](const auto& opA, const auto& opB) { c.noalias() += a0 * (opA * opB); };
  if (ta && tb) add(a.transpose(), b.transpose());
  else if (ta) add(a.transpose(), b);
  else if (tb) add(a, b.transpose());
  else add(a, b);
  return kSuccess;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int cublasCreate_v2(void** handle) {
  if (handle == nullptr) return kInvalidValue;
  auto* h = new Handle;
  h->deviceBytes = reinterpret_cast<DeviceBytes>(dlsym(RTLD_DEFAULT, "eigenlorax_emulated_device_bytes"));
  *handle = h;
  return kSuccess;
}

__attribute__((visibility("default"))) int cublasDestroy_v2(void* handle) {
  if (handle == nullptr) return kNotInitialized;
  delete static_cast<Handle*>(handle);
  return kSuccess;
}

// Every call completes before it returns, so each stream is trivially in order.
__attribute__((visibility("default"))) int cublasSetStream_v2(void* handle, void*) {
  return handle == nullptr ? kNotInitialized : kSuccess;
}

__attribute__((visibility("default"))) int cublasGetVersion_v2(void* handle, int* version) {
  if (handle == nullptr) return kNotInitialized;
  if (version == nullptr) return kInvalidValue;
  *version = 130000;  // CUBLAS_VERSION of cuBLAS 13.0.0
  return kSuccess;
}

// cublasMath_t: DEFAULT 0, TENSOR_OP 1, PEDANTIC 2, TF32_TENSOR_OP 3, each with the
// DISALLOW_REDUCED_PRECISION_REDUCTION flag or not. Products here are always full f32.
__attribute__((visibility("default"))) int cublasSetMathMode(void* handle, int mode) {
  if (handle == nullptr) return kNotInitialized;
  const int base = mode & ~kDisallowReducedPrecisionReduction;
  return base < 0 || base > 3 ? kInvalidValue : kSuccess;
}

__attribute__((visibility("default"))) int cublasSgemm_v2(void* handle, int transa, int transb, int m, int n, int k,
                                                          const float* alpha, const float* A, int lda, const float* B,
                                                          int ldb, const float* beta, float* C, int ldc) {
  return gemm(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

__attribute__((visibility("default"))) int cublasDgemm_v2(void* handle, int transa, int transb, int m, int n, int k,
                                                          const double* alpha, const double* A, int lda,
                                                          const double* B, int ldb, const double* beta, double* C,
                                                          int ldc) {
  return gemm(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // extern "C"
