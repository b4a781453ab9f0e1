// The backend's kernels (kernels.h) on the CPU, for the emulated runtime: each one does
// what its kernel in kernels.cu does, entry for entry, after the checks a GPU would make:
// the launch configuration kernels.cu uses must be one a GPU accepts (else a launch error
// for the next cudaGetLastError), and every range a kernel reads or writes must lie in
// one device allocation (else an illegal-address fault, which breaks the context).
#include <algorithm>
#include <cmath>
#include <string>

#include "../../core/dtype.h"
#include "../../core/random.h"
#include "../kernels.h"
#include "emulation.h"

namespace eigenlorax::cuda::kernels {
namespace {

using emulation::launchFailed;

constexpr int kThreads = 256;
// Dynamic shared memory a launch gets without cudaFuncSetAttribute, which kernels.cu
// does not call.
constexpr size_t kMaxDynamicShared = 48 << 10;
constexpr int64_t kMaxGridX = (int64_t{1} << 31) - 1, kMaxGridY = 65535;

unsigned blocksFor(int64_t count) {
  return static_cast<unsigned>(std::min<int64_t>((count + kThreads - 1) / kThreads, int64_t{1} << 20));
}

// Whether a launch of `kernel` with this configuration runs (kernels.cu's numbers).
bool launches(const char* kernel, int64_t gridX, int64_t gridY, int threads, size_t shared) {
  if (emulation::faulted()) return false;
  if (gridX < 1 || gridY < 1 || gridX > kMaxGridX || gridY > kMaxGridY || threads < 1 || threads > 1024) {
    return launchFailed(cudaErrorInvalidConfiguration,
                        std::string(kernel) + ": grid " + std::to_string(gridX) + " x " + std::to_string(gridY) +
                            ", " + std::to_string(threads) + " threads");
  }
  if (shared > kMaxDynamicShared) {
    return launchFailed(cudaErrorInvalidValue,
                        std::string(kernel) + ": " + std::to_string(shared) + " bytes of dynamic shared memory");
  }
  return true;
}

// Whether `count` elements from `p` are device memory; a fault when not.
template <typename T>
bool inDevice(const T* p, int64_t count, const char* kernel, const char* what) {
  if (count <= 0 || emulation::deviceRange(p, static_cast<size_t>(count) * sizeof(T))) return true;
  emulation::fault(std::string(kernel) + " touched " + std::to_string(count) + " x " + std::to_string(sizeof(T)) +
                   " bytes of " + what + " outside device memory");
  return false;
}

}  // namespace

void gaussianColumns(uint64_t seed, int64_t rows, int64_t cols, double* uniforms, float* omegaT, cudaStream_t) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t perColumn = (rows + 1) / 2 * 2;
  if (!launches("uniformColumnsKernel", (cols + 63) / 64, 1, 64, 0)) return;
  if (!inDevice(uniforms, cols * perColumn, "uniformColumnsKernel", "uniforms")) return;
  for (int64_t j = 0; j < cols; ++j) {
    Rng rng(seed * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(j));
    for (int64_t i = 0; i < perColumn; ++i) uniforms[j * perColumn + i] = rng.uniform();
  }
  if (!launches("boxMullerKernel", blocksFor(rows * cols), 1, kThreads, 0)) return;
  if (!inDevice(omegaT, rows * cols, "boxMullerKernel", "omegaT")) return;
  for (int64_t e = 0; e < rows * cols; ++e) {
    const int64_t j = e / rows, i = e % rows;
    const double* u = uniforms + j * perColumn + (i / 2) * 2;
    const double radius = std::sqrt(-2.0 * std::log(u[0]));
    const double angle = 6.283185307179586476925 * u[1];
    omegaT[e] = static_cast<float>(radius * ((i % 2 == 0) ? std::cos(angle) : std::sin(angle)));
  }
}

void widen(const void* src, int dtype, int64_t count, float* dst, cudaStream_t) {
  if (count <= 0) return;
  const char* kernel = dtype == 1 ? "widenF16" : "widenBF16";
  const auto* bits = static_cast<const uint16_t*>(src);
  if (!launches(kernel, blocksFor(count), 1, kThreads, 0) || !inDevice(bits, count, kernel, "src") ||
      !inDevice(dst, count, kernel, "dst")) {
    return;
  }
  for (int64_t i = 0; i < count; ++i) dst[i] = dtype == 1 ? f16ToF32(bits[i]) : bf16ToF32(bits[i]);
}

void toDouble(const float* src, int64_t count, double* dst, cudaStream_t) {
  if (count <= 0 || !launches("toDoubleKernel", blocksFor(count), 1, kThreads, 0) ||
      !inDevice(src, count, "toDoubleKernel", "src") || !inDevice(dst, count, "toDoubleKernel", "dst")) {
    return;
  }
  for (int64_t i = 0; i < count; ++i) dst[i] = src[i];
}

void toFloat(const double* src, int64_t count, float* dst, cudaStream_t) {
  if (count <= 0 || !launches("toFloatKernel", blocksFor(count), 1, kThreads, 0) ||
      !inDevice(src, count, "toFloatKernel", "src") || !inDevice(dst, count, "toFloatKernel", "dst")) {
    return;
  }
  for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<float>(src[i]);
}

void countNonFinite(const float* x, int64_t count, unsigned long long* counter, cudaStream_t) {
  if (count <= 0 || !launches("countNonFiniteKernel", blocksFor(count), 1, kThreads, 0) ||
      !inDevice(x, count, "countNonFiniteKernel", "x")) {
    return;
  }
  unsigned long long found = 0;
  for (int64_t i = 0; i < count; ++i) found += std::isfinite(x[i]) ? 0 : 1;
  if (found != 0 && inDevice(counter, 1, "countNonFiniteKernel", "counter")) *counter += found;
}

void broadcastRows(const float* bias, int64_t n, int64_t d, float* y, cudaStream_t) {
  if (n * d <= 0 || !launches("broadcastRowsKernel", blocksFor(n * d), 1, kThreads, 0) ||
      !inDevice(bias, d, "broadcastRowsKernel", "bias") || !inDevice(y, n * d, "broadcastRowsKernel", "y")) {
    return;
  }
  for (int64_t i = 0; i < n * d; ++i) y[i] = bias[i % d];
}

void mixingMatrix(const float* alpha, const float* beta, int64_t kA, int64_t kB, int64_t r, float scale, float* M,
                  cudaStream_t) {
  const char* kernel = "mixingMatrixKernel";
  if (kA * kB <= 0 || !launches(kernel, blocksFor(kA * kB), 1, kThreads, 0) ||
      !inDevice(alpha, kA * r, kernel, "alpha") || !inDevice(beta, kB * r, kernel, "beta") ||
      !inDevice(M, kA * kB, kernel, "M")) {
    return;
  }
  for (int64_t i = 0; i < kA; ++i) {
    for (int64_t j = 0; j < kB; ++j) {
      float sum = 0.0f;
      for (int64_t t = 0; t < r; ++t) sum += alpha[i * r + t] * beta[j * r + t];
      M[i * kB + j] = scale * sum;
    }
  }
}

void groupedMix(const float* u, int64_t n, int64_t kA, int64_t kB, const float* mixing, const int32_t* rows, float* w,
                cudaStream_t) {
  if (n <= 0) return;
  const char* kernel = "groupedMixKernel";
  const int threads = static_cast<int>(std::min<int64_t>(std::max<int64_t>((kB + 31) / 32 * 32, 32), kThreads));
  if (!launches(kernel, n, 1, threads, static_cast<size_t>(kA) * sizeof(float)) ||
      !inDevice(rows, n, kernel, "rows") || !inDevice(w, n * kB, kernel, "w")) {
    return;
  }
  for (int64_t b = 0; b < n; ++b) {
    const int32_t adapter = rows[b];
    float* wb = w + b * kB;
    if (adapter < 0) {
      std::fill(wb, wb + kB, 0.0f);
      continue;
    }
    const float* ub = u + b * kA;
    const float* m = mixing + static_cast<int64_t>(adapter) * kA * kB;
    if (!inDevice(ub, kA, kernel, "u") || !inDevice(m, kA * kB, kernel, "mixing")) return;
    for (int64_t j = 0; j < kB; ++j) {
      float sum = 0.0f;
      for (int64_t i = 0; i < kA; ++i) sum += ub[i] * m[i * kB + j];
      wb[j] = sum;
    }
  }
}

void loraShrink(const float* x, int64_t n, int64_t dIn, const float* const* aPtrs, const int32_t* ranks,
                const int32_t* rows, int32_t maxRank, float* t, cudaStream_t) {
  if (n <= 0 || maxRank <= 0) return;
  const char* kernel = "loraShrinkKernel";
  if (!launches(kernel, n, 1, kThreads, 0) || !inDevice(rows, n, kernel, "rows") ||
      !inDevice(t, n * maxRank, kernel, "t")) {
    return;
  }
  for (int64_t b = 0; b < n; ++b) {
    const int32_t adapter = rows[b];
    if (adapter >= 0 && (!inDevice(ranks + adapter, 1, kernel, "ranks") || !inDevice(aPtrs + adapter, 1, kernel, "aPtrs"))) {
      return;
    }
    const int32_t rank = adapter < 0 ? 0 : ranks[adapter];
    const float* xb = x + b * dIn;
    if (rank > 0 && !inDevice(xb, dIn, kernel, "x")) return;
    for (int32_t k = 0; k < maxRank; ++k) {
      float sum = 0.0f;
      if (k < rank) {
        const float* ak = aPtrs[adapter] + static_cast<int64_t>(k) * dIn;
        if (!inDevice(ak, dIn, kernel, "A_i")) return;
        // 32 lanes strided over d_in, then the warp's tree reduction into lane 0.
        float lane[32] = {};
        for (int64_t d = 0; d < dIn; ++d) lane[d % 32] += xb[d] * ak[d];
        for (int offset = 16; offset > 0; offset /= 2) {
          for (int l = 0; l < offset; ++l) lane[l] += lane[l + offset];
        }
        sum = lane[0];
      }
      t[b * maxRank + k] = sum;
    }
  }
}

void loraExpand(const float* t, int64_t n, int64_t dOut, const float* const* bPtrs, const int32_t* ranks,
                const float* scales, const int32_t* rows, int32_t maxRank, float* y, cudaStream_t) {
  if (n <= 0 || maxRank <= 0) return;
  const char* kernel = "loraExpandKernel";
  for (int64_t start = 0; start < n; start += kMaxGridY) {
    const int64_t slice = std::min<int64_t>(n - start, kMaxGridY);
    if (!launches(kernel, (dOut + kThreads - 1) / kThreads, slice, kThreads,
                  static_cast<size_t>(maxRank) * sizeof(float)) ||
        !inDevice(rows + start, slice, kernel, "rows")) {
      return;
    }
    for (int64_t b = start; b < start + slice; ++b) {
      const int32_t adapter = rows[b];
      if (adapter < 0) continue;
      if (!inDevice(ranks + adapter, 1, kernel, "ranks") || !inDevice(bPtrs + adapter, 1, kernel, "bPtrs") ||
          !inDevice(scales + adapter, 1, kernel, "scales")) {
        return;
      }
      const int32_t rank = ranks[adapter];
      const float* tb = t + b * maxRank;
      if (!inDevice(tb, rank, kernel, "t") || !inDevice(bPtrs[adapter], dOut * rank, kernel, "B_i") ||
          !inDevice(y + b * dOut, dOut, kernel, "y")) {
        return;
      }
      for (int64_t j = 0; j < dOut; ++j) {
        const float* bj = bPtrs[adapter] + j * rank;
        float sum = 0.0f;
        for (int32_t k = 0; k < rank; ++k) sum += tb[k] * bj[k];
        y[b * dOut + j] += scales[adapter] * sum;
      }
    }
  }
}

}  // namespace eigenlorax::cuda::kernels
