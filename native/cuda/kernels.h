// Launchers of the backend's own kernels (kernels.cu), on a given stream. All matrices
// are row-major. Launch errors surface at the next checked CUDA call.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace eigenlorax::cuda::kernels {

// rsvd's Gaussian test matrix as the CPU backend draws it (native/core/random.h and
// fillGaussianColumns in linalg.cpp): column j from Rng(seed * 0x9e3779b97f4a7c15 + j),
// Box-Muller in double. Written transposed: omegaT is cols x rows, row-major. `uniforms`
// is scratch of cols * 2 * ceil(rows / 2) doubles. The streams are drawn one thread per
// column; the transform runs one thread per entry. Equal to the host's up to the last
// bit of log/sin/cos before rounding to f32.
void gaussianColumns(uint64_t seed, int64_t rows, int64_t cols, double* uniforms, float* omegaT, cudaStream_t stream);
// dst[i] = float(src[i]); dtype 1 = f16, 2 = bf16.
void widen(const void* src, int dtype, int64_t count, float* dst, cudaStream_t stream);
void toDouble(const float* src, int64_t count, double* dst, cudaStream_t stream);
void toFloat(const double* src, int64_t count, float* dst, cudaStream_t stream);
// Adds the number of NaN/Inf entries of x to *counter.
void countNonFinite(const float* x, int64_t count, unsigned long long* counter, cudaStream_t stream);
// y (n x d) = bias in every row.
void broadcastRows(const float* bias, int64_t n, int64_t d, float* y, cudaStream_t stream);
// M (kA x kB) = scale * alpha beta^T, alpha: kA x r, beta: kB x r: the EigenLoRA middle step.
void mixingMatrix(const float* alpha, const float* beta, int64_t kA, int64_t kB, int64_t r, float scale, float* M,
                  cudaStream_t stream);
// w_b (kB) = u_b (kA) M_{rows[b]} for every row b (zero when rows[b] < 0); mixing holds
// the adapters' kA x kB matrices one after another.
void groupedMix(const float* u, int64_t n, int64_t kA, int64_t kB, const float* mixing, const int32_t* rows,
                float* w, cudaStream_t stream);
// The gather baseline, one row at a time (as Punica's BGMV): t_b = x_b A_i^T (shrink),
// y_b += s_i t_b B_i^T (expand), i = rows[b]; rows with i < 0 are left alone.
void loraShrink(const float* x, int64_t n, int64_t dIn, const float* const* aPtrs, const int32_t* ranks,
                const int32_t* rows, int32_t maxRank, float* t, cudaStream_t stream);
void loraExpand(const float* t, int64_t n, int64_t dOut, const float* const* bPtrs, const int32_t* ranks,
                const float* scales, const int32_t* rows, int32_t maxRank, float* y, cudaStream_t stream);

}  // namespace eigenlorax::cuda::kernels
