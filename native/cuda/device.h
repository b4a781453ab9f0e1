// Inside the CUDA backend: the process-wide context (device 0, one stream, the cuBLAS
// handle), error checks, scratch memory and the operations on device pointers that
// backend.cpp wraps with uploads and downloads. The benchmark uses these directly so it
// times the device work alone.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "backend.h"
#include "cublas.h"

namespace eigenlorax::cuda {

struct Context {
  int device = 0;
  cudaStream_t stream = nullptr;
  CublasHandle blasHandle = nullptr;
  const CublasApi* blas = nullptr;
};

// The context, created on first use; throws ERR_DEVICE_UNAVAILABLE with the reason.
Context& context();

// Throws ERR_DEVICE (ERR_OUT_OF_MEMORY for allocation failures) naming `what`.
void check(cudaError_t status, const std::string& what);
void checkBlas(int status, const std::string& what);
void synchronize(const std::string& what);

// Scratch memory for one operation: carved from a grow-only arena owned by the context,
// reused by the next operation (operations run one at a time and end synchronised).
// A Workspace is held for the whole operation and makes it the only one running: a
// second one alive at once would hand out the same memory (and share the cuBLAS handle,
// which cuBLAS forbids), so one from another thread waits until the first is gone. (The
// addon calls from one thread; other callers of backend.h need not.) One thread must
// not hold two.
class Workspace {
 public:
  Workspace();
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  template <typename T>
  T* take(int64_t count) {
    return static_cast<T*>(takeBytes(static_cast<size_t>(count) * sizeof(T)));
  }
 private:
  void* takeBytes(size_t bytes);
  std::unique_lock<std::mutex> lock_;
  std::vector<void*> extra_;  // chunks beyond the arena, folded into it afterwards
  size_t used_ = 0;
  size_t extraBytes_ = 0;
};

// Copies of host data (and widened copies of f16/bf16 device data) as f32 on the device.
const float* deviceF32(const Operand& op, Workspace& ws, const char* name);
const float* deviceF32Optional(const Operand& op, Workspace& ws, const char* name);
void copyToHost(const float* device, int64_t count, float* host);
template <typename T>
T* uploadArray(const T* host, int64_t count, Workspace& ws) {
  T* d = ws.take<T>(count);
  if (count > 0) check(cudaMemcpyAsync(d, host, static_cast<size_t>(count) * sizeof(T), cudaMemcpyHostToDevice,
                                       context().stream),
                       "copy to the device");
  return d;
}

// Row-major products on the context's stream: C (M x N) = alpha op(A) op(B) + beta C,
// where lda/ldb/ldc are the row strides of A, B, C as stored.
void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

// The operations on device pointers (row-major f32). `bias` may be null; `weight` may be
// null (then y is the adapter's delta).
namespace dev {
void base(const float* x, int64_t n, int64_t dIn, int64_t dOut, const float* weight, const float* bias, float* y);
void loraForward(const float* x, int64_t n, int64_t dIn, int64_t dOut, const float* a, const float* b, int64_t r,
                 float scale, const float* weight, const float* bias, float* y, Workspace& ws);
void eigenLoraForward(const float* x, int64_t n, int64_t dIn, int64_t dOut, const float* componentsA, int64_t kA,
                      const float* alpha, const float* beta, int64_t r, const float* componentsB, int64_t kB,
                      float scale, const float* weight, const float* bias, float* y, Workspace& ws);
// rows: device, n entries in [-1, count).
void eigenBankApply(const float* x, int64_t n, int64_t dIn, int64_t dOut, const float* componentsA, int64_t kA,
                    const float* componentsB, int64_t kB, const float* mixing, const int32_t* rows,
                    const float* weight, const float* bias, float* y, Workspace& ws);
// The per-row gather baseline. aPtrs/bPtrs/ranks/scales: device arrays, one per adapter.
void loraBankApply(const float* x, int64_t n, int64_t dIn, int64_t dOut, const float* const* aPtrs,
                   const float* const* bPtrs, const int32_t* ranks, const float* scales, int32_t maxRank,
                   const int32_t* rows, const float* weight, const float* bias, float* y, Workspace& ws);
// Where an rsvd's time goes (ms, host clock between stream synchronisations): filled
// only when asked for, since the synchronisations it adds cost time themselves.
struct RsvdStages {
  double check = 0;        // the NaN/Inf scan of A
  double testMatrix = 0;   // the Gaussian test matrix
  double products = 0;     // the 2q + 2 passes over A
  double gram = 0;         // CholeskyQR: Gram matrices on the device, to the host
  double cholesky = 0;     // CholeskyQR: factorisation and inverse on the host
  double apply = 0;        // CholeskyQR: Q R^-1 on the device (and the f32 <-> f64 copies)
  double smallSvd = 0;     // the l x l SVD on the host
  double factors = 0;      // U, V: products, to the host, signs
};

// Randomized SVD of a device matrix (m x n, f32); u, s, v on the host.
RsvdInfo rsvd(const float* a, int64_t m, int64_t n, const RsvdOptions& options, MatView u, float* s, MatView v,
              Workspace& ws, RsvdStages* stages = nullptr);
}  // namespace dev

}  // namespace eigenlorax::cuda
