// The backend's own kernels: dtype widening, checks, and the small steps around the
// cuBLAS products (the EigenLoRA mixing matrix, the grouped per-adapter step of a batch,
// and the per-row LoRA gather of the baseline).
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels.h"

namespace eigenlorax::cuda::kernels {
namespace {

constexpr int kThreads = 256;

unsigned blocksFor(int64_t count) {
  return static_cast<unsigned>(std::min<int64_t>((count + kThreads - 1) / kThreads, int64_t{1} << 20));
}

__device__ uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

__device__ uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// xoshiro256** seeded through splitmix64, as eigenlorax::Rng: the column's uniforms in (0, 1).
__global__ void uniformColumnsKernel(uint64_t seed, int64_t perColumn, int64_t cols, double* uniforms) {
  const int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (j >= cols) return;
  uint64_t x = seed * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(j);
  uint64_t s0 = splitmix64(x), s1 = splitmix64(x), s2 = splitmix64(x), s3 = splitmix64(x);
  double* out = uniforms + j * perColumn;
  for (int64_t i = 0; i < perColumn; ++i) {
    const uint64_t result = rotl(s1 * 5, 7) * 9;
    const uint64_t t = s1 << 17;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = rotl(s3, 45);
    out[i] = (static_cast<double>(result >> 11) + 0.5) * 0x1.0p-53;
  }
}

// Box-Muller on consecutive pairs: entry 2k is r cos(theta), entry 2k + 1 is r sin(theta).
__global__ void boxMullerKernel(const double* uniforms, int64_t rows, int64_t perColumn, int64_t cols, float* omegaT) {
  const int64_t count = rows * cols;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < count; e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t j = e / rows, i = e % rows;
    const double* u = uniforms + j * perColumn + (i / 2) * 2;
    const double radius = sqrt(-2.0 * log(u[0]));
    const double angle = 6.283185307179586476925 * u[1];
    omegaT[e] = static_cast<float>(radius * ((i % 2 == 0) ? cos(angle) : sin(angle)));
  }
}

__global__ void widenF16(const __half* src, int64_t count, float* dst) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = __half2float(src[i]);
  }
}

// bf16 is the top half of an f32: widening is exact.
__global__ void widenBF16(const unsigned short* src, int64_t count, float* dst) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = __uint_as_float(static_cast<unsigned>(src[i]) << 16);
  }
}

__global__ void toDoubleKernel(const float* src, int64_t count, double* dst) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = src[i];
  }
}

__global__ void toFloatKernel(const double* src, int64_t count, float* dst) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = static_cast<float>(src[i]);
  }
}

__global__ void countNonFiniteKernel(const float* x, int64_t count, unsigned long long* counter) {
  unsigned long long local = 0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    if (!isfinite(x[i])) ++local;
  }
  if (local != 0) atomicAdd(counter, local);
}

__global__ void broadcastRowsKernel(const float* bias, int64_t n, int64_t d, float* y) {
  const int64_t count = n * d;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = bias[i % d];
  }
}

__global__ void mixingMatrixKernel(const float* alpha, const float* beta, int64_t kA, int64_t kB, int64_t r,
                                   float scale, float* M) {
  const int64_t count = kA * kB;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < count; e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = e / kB, j = e % kB;
    float sum = 0.0f;
    for (int64_t t = 0; t < r; ++t) sum += alpha[i * r + t] * beta[j * r + t];
    M[e] = scale * sum;
  }
}

// One block per row: the row's u in shared memory, threads across the kB outputs, so the
// reads of M_i are coalesced.
__global__ void groupedMixKernel(const float* u, int64_t kA, int64_t kB, const float* mixing, const int32_t* rows,
                                 float* w) {
  extern __shared__ float shared[];
  const int64_t b = blockIdx.x;
  const int32_t adapter = rows[b];
  float* wb = w + b * kB;
  if (adapter < 0) {
    for (int64_t j = threadIdx.x; j < kB; j += blockDim.x) wb[j] = 0.0f;
    return;
  }
  for (int64_t i = threadIdx.x; i < kA; i += blockDim.x) shared[i] = u[b * kA + i];
  __syncthreads();
  const float* m = mixing + static_cast<int64_t>(adapter) * kA * kB;
  for (int64_t j = threadIdx.x; j < kB; j += blockDim.x) {
    float sum = 0.0f;
    for (int64_t i = 0; i < kA; ++i) sum += shared[i] * m[i * kB + j];
    wb[j] = sum;
  }
}

// One block per row, one warp per rank index: t_b[k] = x_b . A_i[k].
__global__ void loraShrinkKernel(const float* x, int64_t dIn, const float* const* aPtrs, const int32_t* ranks,
                                 const int32_t* rows, int32_t maxRank, float* t) {
  const int64_t b = blockIdx.x;
  const int32_t adapter = rows[b];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int32_t rank = adapter < 0 ? 0 : ranks[adapter];
  const float* xb = x + b * dIn;
  for (int32_t k = warp; k < maxRank; k += warps) {
    float sum = 0.0f;
    if (k < rank) {
      const float* ak = aPtrs[adapter] + static_cast<int64_t>(k) * dIn;
      for (int64_t d = lane; d < dIn; d += 32) sum += xb[d] * ak[d];
      for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) t[b * maxRank + k] = sum;
  }
}

// Blocks over (column chunk, row): y_b[j] += s_i t_b . B_i[j].
__global__ void loraExpandKernel(const float* t, int64_t dOut, const float* const* bPtrs, const int32_t* ranks,
                                 const float* scales, const int32_t* rows, int32_t maxRank, float* y) {
  extern __shared__ float tb[];
  const int64_t b = blockIdx.y;
  const int32_t adapter = rows[b];
  if (adapter < 0) return;
  const int32_t rank = ranks[adapter];
  for (int32_t k = threadIdx.x; k < rank; k += blockDim.x) tb[k] = t[b * maxRank + k];
  __syncthreads();
  const int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (j >= dOut) return;
  const float* bj = bPtrs[adapter] + j * rank;
  float sum = 0.0f;
  for (int32_t k = 0; k < rank; ++k) sum += tb[k] * bj[k];
  y[b * dOut + j] += scales[adapter] * sum;
}

}  // namespace

void gaussianColumns(uint64_t seed, int64_t rows, int64_t cols, double* uniforms, float* omegaT, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t perColumn = (rows + 1) / 2 * 2;
  uniformColumnsKernel<<<static_cast<unsigned>((cols + 63) / 64), 64, 0, stream>>>(seed, perColumn, cols, uniforms);
  boxMullerKernel<<<blocksFor(rows * cols), kThreads, 0, stream>>>(uniforms, rows, perColumn, cols, omegaT);
}

void widen(const void* src, int dtype, int64_t count, float* dst, cudaStream_t stream) {
  if (count <= 0) return;
  if (dtype == 1) widenF16<<<blocksFor(count), kThreads, 0, stream>>>(static_cast<const __half*>(src), count, dst);
  else widenBF16<<<blocksFor(count), kThreads, 0, stream>>>(static_cast<const unsigned short*>(src), count, dst);
}

void toDouble(const float* src, int64_t count, double* dst, cudaStream_t stream) {
  if (count > 0) toDoubleKernel<<<blocksFor(count), kThreads, 0, stream>>>(src, count, dst);
}

void toFloat(const double* src, int64_t count, float* dst, cudaStream_t stream) {
  if (count > 0) toFloatKernel<<<blocksFor(count), kThreads, 0, stream>>>(src, count, dst);
}

void countNonFinite(const float* x, int64_t count, unsigned long long* counter, cudaStream_t stream) {
  if (count > 0) countNonFiniteKernel<<<blocksFor(count), kThreads, 0, stream>>>(x, count, counter);
}

void broadcastRows(const float* bias, int64_t n, int64_t d, float* y, cudaStream_t stream) {
  if (n * d > 0) broadcastRowsKernel<<<blocksFor(n * d), kThreads, 0, stream>>>(bias, n, d, y);
}

void mixingMatrix(const float* alpha, const float* beta, int64_t kA, int64_t kB, int64_t r, float scale, float* M,
                  cudaStream_t stream) {
  if (kA * kB > 0) mixingMatrixKernel<<<blocksFor(kA * kB), kThreads, 0, stream>>>(alpha, beta, kA, kB, r, scale, M);
}

void groupedMix(const float* u, int64_t n, int64_t kA, int64_t kB, const float* mixing, const int32_t* rows, float* w,
                cudaStream_t stream) {
  if (n <= 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(std::max<int64_t>((kB + 31) / 32 * 32, 32), kThreads));
  groupedMixKernel<<<static_cast<unsigned>(n), threads, static_cast<size_t>(kA) * sizeof(float), stream>>>(
      u, kA, kB, mixing, rows, w);
}

void loraShrink(const float* x, int64_t n, int64_t dIn, const float* const* aPtrs, const int32_t* ranks,
                const int32_t* rows, int32_t maxRank, float* t, cudaStream_t stream) {
  if (n <= 0 || maxRank <= 0) return;
  loraShrinkKernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(x, dIn, aPtrs, ranks, rows, maxRank, t);
}

void loraExpand(const float* t, int64_t n, int64_t dOut, const float* const* bPtrs, const int32_t* ranks,
                const float* scales, const int32_t* rows, int32_t maxRank, float* y, cudaStream_t stream) {
  if (n <= 0 || maxRank <= 0) return;
  // gridDim.y is at most 65535: long batches go in slices of rows.
  for (int64_t start = 0; start < n; start += 65535) {
    const dim3 grid(static_cast<unsigned>((dOut + kThreads - 1) / kThreads),
                    static_cast<unsigned>(std::min<int64_t>(n - start, 65535)));
    loraExpandKernel<<<grid, kThreads, static_cast<size_t>(maxRank) * sizeof(float), stream>>>(
        t + start * maxRank, dOut, bPtrs, ranks, scales, rows + start, maxRank, y + start * dOut);
  }
}

}  // namespace eigenlorax::cuda::kernels
