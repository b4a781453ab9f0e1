#include "stack_products.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "threads.h"

namespace eigenlorax {
namespace {

#ifdef __AVX512F__

// Packing buffers kept by the calling thread (fresh ones cost page faults at every
// product); over kKeepBytes they are freed after the product.
constexpr size_t kKeepBytes = size_t(16) << 20;
thread_local std::vector<float> packScratch;

float* zeroedScratch(size_t count) {
  packScratch.assign(count, 0.0f);
  return packScratch.data();
}

void trimScratch() {
  if (packScratch.capacity() * sizeof(float) > kKeepBytes) std::vector<float>().swap(packScratch);
}

// --- y = S x: rank-one updates along S's columns ----------------------------------------
// out = A b with A = S (outRows x depth, read in place) and b = x (depth x l) packed row-major,
// zero-padded to whole vectors of 16. A tile holds MR rows of out (up to 5 vectors of b's
// columns each) in registers and walks down a block of the depth: each step broadcasts
// A(r, k) for its MR rows and multiplies b's row k. The depth is blocked so that b's block
// stays in L2 (without it, x's 2.4 MB at 8000 x 74 came from L3 at every tile: dot products
// along S's rows ran at 200 GFLOP/s, this at 310-330). The same form for S^T q (S broadcast
// down its columns) ran at 190-260 against 250-290 for the kernel below: each step of its
// depth is another row of S, another page.
// Every entry of out is one sum in the order of k, so its bits depend neither on the
// blocking nor on the thread count nor on where S lies.
constexpr Index kPanel = 5;     // vectors of b's columns per tile, at most
constexpr Index kDepth = 1024;  // depth per block: b's 1024 x 80 (320 KiB) in L2

template <int MR, int NV>
void updateTile(const float* const (&rowsOfA)[MR], Index k0, Index k1, const float* bp, Index ldb,
                float* out, Index ldo) {
  __m512 c[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) c[i][v] = _mm512_loadu_ps(out + i * ldo + 16 * v);
  for (Index k = k0; k < k1; ++k) {
    __m512 b[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(bp + k * ldb + 16 * v);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(rowsOfA[i][k]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[i][v] = _mm512_fmadd_ps(a, b[v], c[i][v]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + i * ldo + 16 * v, c[i][v]);
}

// Rows per tile for NV vectors: MR NV accumulators, NV vectors of b and a broadcast within
// the 32 registers (6 x 5 spilled: 149 GFLOP/s at l = 74).
constexpr int tileRows(int nv) { return nv >= 5 ? 5 : nv == 4 ? 6 : nv == 3 ? 8 : 12; }

// Rows r0..r0+mr-1 of out (row-major, ldo) += A(rows, k0..k1) b(k0..k1, panel): a tile short
// of rows repeats its last row and drops the copies' results.
template <int NV>
void updateRows(const ConstMapF& A, Index r0, Index mr, Index k0, Index k1, const float* bp, Index ldb, float* out, Index ldo) {
  constexpr int MR = tileRows(NV);
  const float* rowsOfA[MR];
  for (int i = 0; i < MR; ++i) rowsOfA[i] = A.data() + std::min<Index>(r0 + i, r0 + mr - 1) * A.cols();
  if (mr == MR) return updateTile<MR, NV>(rowsOfA, k0, k1, bp, ldb, out + r0 * ldo, ldo);
  alignas(64) float tail[MR * NV * 16];
  for (Index i = 0; i < MR; ++i)
    std::memcpy(tail + i * NV * 16, out + std::min<Index>(r0 + i, r0 + mr - 1) * ldo, sizeof(float) * NV * 16);
  updateTile<MR, NV>(rowsOfA, k0, k1, bp, ldb, tail, NV * 16);
  for (Index i = 0; i < mr; ++i) std::memcpy(out + (r0 + i) * ldo, tail + i * NV * 16, sizeof(float) * NV * 16);
}

void stackTimesVectorised(const ConstMapF& A, const ColMatF& b, ColMatF& result) {
  const Index outRows = A.rows(), depth = A.cols(), l = b.cols(), vectors = (l + 15) / 16, ld = vectors * 16;
  // b row-major and zero-padded to whole vectors, then out's rows (row-major) to accumulate in.
  float* bp = zeroedScratch(static_cast<size_t>((depth + outRows) * ld));
  float* out = bp + depth * ld;
  for (Index j = 0; j < l; ++j)
    for (Index k = 0; k < depth; ++k) bp[k * ld + j] = b(k, j);
  // Threads split out's rows in whole 16-row units.
  perThreadRanges((outRows + 15) / 16, 2, [&](Index u0, Index u1) {
    const Index r0 = u0 * 16, r1 = std::min(outRows, u1 * 16);
    for (Index k0 = 0; k0 < depth; k0 += kDepth) {
      const Index k1 = std::min(depth, k0 + kDepth);
      for (Index v0 = 0; v0 < vectors; v0 += kPanel) {
        const Index nv = std::min(kPanel, vectors - v0), mr = tileRows(static_cast<int>(nv));
        for (Index i0 = r0; i0 < r1; i0 += mr) {
          const Index m = std::min(mr, r1 - i0);
          const float* panel = bp + 16 * v0;
          float* outPanel = out + 16 * v0;
          switch (nv) {
            case 5: updateRows<5>(A, i0, m, k0, k1, panel, ld, outPanel, ld); break;
            case 4: updateRows<4>(A, i0, m, k0, k1, panel, ld, outPanel, ld); break;
            case 3: updateRows<3>(A, i0, m, k0, k1, panel, ld, outPanel, ld); break;
            case 2: updateRows<2>(A, i0, m, k0, k1, panel, ld, outPanel, ld); break;
            default: updateRows<1>(A, i0, m, k0, k1, panel, ld, outPanel, ld); break;
          }
        }
      }
    }
    for (Index j = 0; j < l; ++j)
      for (Index i = r0; i < r1; ++i) result(i, j) = out[i * ld + j];
  });
}

// --- z = S^T q: rank-one updates along S's rows --------------------------------------------
// A tile holds 64 consecutive columns of S (4 vectors) against 6 columns of q, and walks
// down a block of S's rows: z's tile stays in registers. Each thread first packs its tiles
// of a 64-row block, reading every row along its length, and every group of q's columns
// then reads the packed tile from L1. Read in place (512-row blocks), the rows of a tile
// lie a whole row of S apart and, at the power-of-two widths of real stacks (4096 floats =
// 16 KiB), fall in a few cache sets: 85-93 GFLOP/s at 4096 x 4096 against 170 at
// 4096 x 4100; packed, 190-200 at both. Each entry of z is the same sum in the same order
// as before, bit for bit.
constexpr Index kAxpyWidth = 64;      // columns of S per tile
constexpr Index kAxpyCols = 6;        // columns of q per tile: 24 accumulators
constexpr Index kAxpyRowBlock = 64;   // a tile's 64 x 64 block of S (16 KiB) stays in L1 across q's groups

// Lanes lo..hi-1 of a 16-lane mask.
__mmask16 laneRange(Index lo, Index hi) {
  uint32_t bits = 0;
  for (Index lane = std::max<Index>(0, lo); lane < std::min<Index>(16, hi); ++lane) bits |= 1u << lane;
  return static_cast<__mmask16>(bits);
}

// s: count packed rows of 64 floats; z's columns past zCols and lanes outside masks are
// neither read nor written (mask 0: no access, no fault).
template <bool First>
inline void axpyTile(const float* s, const float* qt, Index ldq, Index count, const __mmask16 masks[4],
                     float* z, Index ldz, Index zCols) {
  // No branch on zCols inside the loops, so that GCC keeps c in registers.
  __mmask16 zMasks[kAxpyCols][4];
  #pragma GCC unroll 16
  for (int j = 0; j < kAxpyCols; ++j)
    #pragma GCC unroll 16
    for (int v = 0; v < 4; ++v) zMasks[j][v] = j < zCols ? masks[v] : __mmask16(0);
  __m512 c[4][kAxpyCols];
  #pragma GCC unroll 16
  for (int j = 0; j < kAxpyCols; ++j)
    #pragma GCC unroll 16
    for (int v = 0; v < 4; ++v)
      c[v][j] = First ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(zMasks[j][v], z + j * ldz + 16 * v);
  for (Index i = 0; i < count; ++i) {
    const float* row = s + i * kAxpyWidth;
    __m512 a[4];
    #pragma GCC unroll 16
    for (int v = 0; v < 4; ++v) a[v] = _mm512_load_ps(row + 16 * v);
    const float* qi = qt + i * ldq;
    #pragma GCC unroll 16
    for (int j = 0; j < kAxpyCols; ++j) {
      const __m512 b = _mm512_set1_ps(qi[j]);
      #pragma GCC unroll 16
      for (int v = 0; v < 4; ++v) c[v][j] = _mm512_fmadd_ps(a[v], b, c[v][j]);
    }
  }
  #pragma GCC unroll 16
  for (int j = 0; j < kAxpyCols; ++j)
    #pragma GCC unroll 16
    for (int v = 0; v < 4; ++v) _mm512_mask_storeu_ps(z + j * ldz + 16 * v, zMasks[j][v], c[v][j]);
}

void stackTransposeTimesVectorised(const ConstMapF& s, const ColMatF& q, ColMatF& z) {
  const Index rows = s.rows(), cols = s.cols(), l = q.cols();
  const Index groups = (l + kAxpyCols - 1) / kAxpyCols, ldq = groups * kAxpyCols;
  // q transposed (rows x ldq, row-major), zero past l: a tile broadcasts q(i, j..j+5) from one line.
  float* qt = zeroedScratch(static_cast<size_t>(rows * ldq));
  for (Index j = 0; j < l; ++j)
    for (Index i = 0; i < rows; ++i) qt[i * ldq + j] = q(i, j);
  const Index tiles = (cols + kAxpyWidth - 1) / kAxpyWidth;
  perThreadRanges(tiles, 2, [&](Index t0, Index t1) {
    // The thread's tiles of a row block, packed tile after tile, in Eigen's storage (64-byte
    // aligned with AVX-512); kept by the thread: fresh memory costs page faults per product.
    thread_local Eigen::VectorXf packed;
    if (packed.size() < (t1 - t0) * kAxpyRowBlock * kAxpyWidth) packed.resize((t1 - t0) * kAxpyRowBlock * kAxpyWidth);
    std::vector<std::array<__mmask16, 4>> masks(static_cast<size_t>(t1 - t0));
    for (Index tile = t0; tile < t1; ++tile)
      for (int v = 0; v < 4; ++v) masks[tile - t0][v] = laneRange(0, cols - tile * kAxpyWidth - 16 * v);
    for (Index i0 = 0; i0 < rows; i0 += kAxpyRowBlock) {
      const Index count = std::min(kAxpyRowBlock, rows - i0);
      // Row after row, each read along its length.
      for (Index i = 0; i < count; ++i) {
        const float* row = s.data() + (i0 + i) * cols;
        for (Index tile = t0; tile < t1; ++tile) {
          float* to = packed.data() + ((tile - t0) * kAxpyRowBlock + i) * kAxpyWidth;
          const float* from = row + tile * kAxpyWidth;
          #pragma GCC unroll 4
          for (int v = 0; v < 4; ++v) _mm512_store_ps(to + 16 * v, _mm512_maskz_loadu_ps(masks[tile - t0][v], from + 16 * v));
        }
      }
      for (Index tile = t0; tile < t1; ++tile) {
        const float* block = packed.data() + (tile - t0) * kAxpyRowBlock * kAxpyWidth;
        for (Index g = 0; g < groups; ++g) {
          const Index zCols = std::min(kAxpyCols, l - g * kAxpyCols);
          const float* qBlock = qt + i0 * ldq + g * kAxpyCols;
          float* zTile = z.data() + g * kAxpyCols * cols + tile * kAxpyWidth;
          (i0 == 0 ? axpyTile<true> : axpyTile<false>)(block, qBlock, ldq, count, masks[tile - t0].data(), zTile, cols,
                                                       zCols);
        }
      }
    }
  });
}

#endif  // __AVX512F__

}  // namespace

bool stackProductsVectorised() {
#ifdef __AVX512F__
  return true;
#else
  return false;
#endif
}

void releaseStackProductsScratch() {
#ifdef __AVX512F__
  std::vector<float>().swap(packScratch);
#endif
}

void stackTimes(const ConstMapF& s, const ColMatF& x, ColMatF& y) {
  y.resize(s.rows(), x.cols());
#ifdef __AVX512F__
  stackTimesVectorised(s, x, y);
  trimScratch();
#else
  // One row block per thread, each a single-threaded Eigen GEMM: no barriers between the
  // threads (Eigen's parallel GEMM synchronises on every shared packed block). Blocks
  // start at multiples of 16 rows (aligned packets).
  perThreadRanges((s.rows() + 15) / 16, 4, [&](Index b0, Index b1) {
    const Index r0 = b0 * 16, r1 = std::min(s.rows(), b1 * 16);
    y.middleRows(r0, r1 - r0).noalias() = s.middleRows(r0, r1 - r0) * x;
  });
#endif
}

void stackTransposeTimes(const ConstMapF& s, const ColMatF& q, ColMatF& z) {
  z.resize(s.cols(), q.cols());
#ifdef __AVX512F__
  stackTransposeTimesVectorised(s, q, z);
  trimScratch();
#else
  perThreadRanges((s.cols() + 15) / 16, 4, [&](Index b0, Index b1) {
    const Index c0 = b0 * 16, c1 = std::min(s.cols(), b1 * 16);
    z.middleRows(c0, c1 - c0).noalias() = s.middleCols(c0, c1 - c0).transpose() * q;
  });
#endif
}

}  // namespace eigenlorax
