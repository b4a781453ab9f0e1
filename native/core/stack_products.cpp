#include "stack_products.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "threads.h"

namespace eigenlorax {
namespace {

// Splits [0, units) into one contiguous range per thread (at least minPerThread units
// each) and runs body(begin, end) on each: no barriers between the threads. An exception
// (bad_alloc) is rethrown after the region, never out of it.
template <typename Body>
void perThreadRanges(Index units, Index minPerThread, Body body) {
  const int threads =
      static_cast<int>(std::min<Index>(currentThreads(), std::max<Index>(1, units / std::max<Index>(1, minPerThread))));
  std::exception_ptr error;
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const Index t = omp_get_thread_num(), count = omp_get_num_threads();
#else
    const Index t = 0, count = 1;
#endif
    const Index begin = units * t / count, end = units * (t + 1) / count;
    try {
      if (end > begin) body(begin, end);
    } catch (...) {
#pragma omp critical(eigenlorax_stack_products_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

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

// --- y = S x: dot products along S's rows ------------------------------------------------
// Eigen's GEMM packs S (the large operand) at every product, a full extra read and write
// of it, and its 48 x 4 kernel suits square shapes. Here S is read in place, once, row
// segments in order; x (thin) is packed so that a tile reads it sequentially.
constexpr Index kDotRows = 8;    // rows of S per tile
constexpr Index kDotCols = 3;    // columns of x per tile: 24 accumulators of 16 lanes

// The chunks of 16 columns a row is read in start `lead` columns before it, so that they
// fall on 64-byte lines: a load that straddles two lines costs the dot kernel, whose loads
// are one in three instructions, about 60% more time (JavaScript's and malloc's buffers
// are 16-byte aligned). Possible when every row has the same alignment (cols a multiple
// of 16, or one row); otherwise lead = 0 and the loads are unaligned.
Index leadForAlignment(const float* data, Index rows, Index cols) {
  if (rows > 1 && cols % 16 != 0) return 0;
  const auto address = reinterpret_cast<uintptr_t>(data);
  return address % 4 != 0 ? 0 : static_cast<Index>((address % 64) / 4);
}

// x (cols x l) as groups of 3 columns, each as chunks of 16 rows (chunk c: rows
// 16 c - lead ... 16 c - lead + 15): [group][chunk][column][16], zero outside [0, cols) and past l.
const float* packForDots(const ColMatF& x, Index groups, Index chunks, Index lead) {
  const Index cols = x.rows(), l = x.cols();
  float* packed = zeroedScratch(static_cast<size_t>(groups * chunks * kDotCols * 16));
  for (Index g = 0; g < groups; ++g) {
    for (Index j = 0; j < kDotCols && g * kDotCols + j < l; ++j) {
      const float* column = x.data() + (g * kDotCols + j) * cols;
      for (Index ch = 0; ch < chunks; ++ch) {
        const Index p0 = std::max<Index>(0, ch * 16 - lead), p1 = std::min<Index>(cols, ch * 16 - lead + 16);
        float* to = packed + ((g * chunks + ch) * kDotCols + j) * 16 + (p0 - (ch * 16 - lead));
        std::memcpy(to, column + p0, sizeof(float) * (p1 - p0));
      }
    }
  }
  return packed;
}

// One chunk of a tile: c[i][j] += s_i(chunk) . x_j(chunk), s read under `mask`.
template <int MR>
__attribute__((always_inline)) inline void dotStep(__m512 (&c)[MR][kDotCols], const float* s, Index lds,
                                                   const float* xc, __mmask16 mask) {
  __m512 xv[kDotCols];
#pragma GCC unroll 16
  for (int j = 0; j < kDotCols; ++j) xv[j] = _mm512_loadu_ps(xc + 16 * j);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    __m512 av = _mm512_maskz_loadu_ps(mask, s + i * lds);
    // Keeps av in a register: GCC would otherwise fold the load into each of the three
    // FMAs, tripling the loads of a kernel that is bound by them.
    asm("" : "+v"(av));
#pragma GCC unroll 16
    for (int j = 0; j < kDotCols; ++j) c[i][j] = _mm512_fmadd_ps(av, xv[j], c[i][j]);
  }
}

template <int MR>
__attribute__((always_inline)) inline void dotStepFull(__m512 (&c)[MR][kDotCols], const float* s, Index lds,
                                                       const float* xc) {
  __m512 xv[kDotCols];
#pragma GCC unroll 16
  for (int j = 0; j < kDotCols; ++j) xv[j] = _mm512_loadu_ps(xc + 16 * j);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    __m512 av = _mm512_loadu_ps(s + i * lds);
    // Keeps av in a register: GCC would otherwise fold the load into each of the three
    // FMAs, tripling the loads of a kernel that is bound by them.
    asm("" : "+v"(av));
#pragma GCC unroll 16
    for (int j = 0; j < kDotCols; ++j) c[i][j] = _mm512_fmadd_ps(av, xv[j], c[i][j]);
  }
}

// Pairwise sum of the 16 lanes, taken from lane `rotate` on (a tile's lane holds the columns
// = lane - lead mod 16; so the sum runs over the same column classes in the same order
// whatever the lead). GCC 12's _mm512_reduce_add_ps warns from its own header.
inline float sumLanes(__m512 v, Index rotate) {
  alignas(64) float lanes[16];
  float rotated[16];
  _mm512_store_ps(lanes, v);
  for (int lane = 0; lane < 16; ++lane) rotated[lane] = lanes[(lane + rotate) % 16];
  for (int width = 8; width > 0; width /= 2)
    for (int i = 0; i < width; ++i) rotated[i] += rotated[i + width];
  return rotated[0];
}

// MR rows of S (s: the first chunk's start, lds: row stride) against one group of x's
// columns over `chunks` chunks; the first and last chunks are read under their masks. No
// blocking over the depth: a tile's rows (8 x 16 KiB at 4096 columns) stay in L2 across
// x's groups, and each entry is one sum.
template <int MR>
void dotTile(const float* s, Index lds, const float* xp, Index chunks, __mmask16 firstMask, __mmask16 lastMask,
             Index rotate, float out[kDotRows][kDotCols]) {
  __m512 c[MR][kDotCols];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < kDotCols; ++j) c[i][j] = _mm512_setzero_ps();
  Index begin = 0, end = chunks;
  if (firstMask != 0xFFFF || chunks == 1) {
    dotStep<MR>(c, s, lds, xp, chunks == 1 ? __mmask16(firstMask & lastMask) : firstMask);
    begin = 1;
  }
  const bool maskedLast = end > begin && lastMask != 0xFFFF;
  if (maskedLast) --end;
  for (Index ch = begin; ch < end; ++ch) dotStepFull<MR>(c, s + ch * 16, lds, xp + ch * kDotCols * 16);
  if (maskedLast) dotStep<MR>(c, s + end * 16, lds, xp + end * kDotCols * 16, lastMask);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kDotCols; ++j) out[i][j] = sumLanes(c[i][j], rotate);
}

void dotTileRows(Index rows, const float* s, Index lds, const float* xp, Index chunks, __mmask16 firstMask,
                 __mmask16 lastMask, Index rotate, float out[kDotRows][kDotCols]) {
  switch (rows) {
    case 8: return dotTile<8>(s, lds, xp, chunks, firstMask, lastMask, rotate, out);
    case 7: return dotTile<7>(s, lds, xp, chunks, firstMask, lastMask, rotate, out);
    case 6: return dotTile<6>(s, lds, xp, chunks, firstMask, lastMask, rotate, out);
    case 5: return dotTile<5>(s, lds, xp, chunks, firstMask, lastMask, rotate, out);
    case 4: return dotTile<4>(s, lds, xp, chunks, firstMask, lastMask, rotate, out);
    case 3: return dotTile<3>(s, lds, xp, chunks, firstMask, lastMask, rotate, out);
    case 2: return dotTile<2>(s, lds, xp, chunks, firstMask, lastMask, rotate, out);
    default: return dotTile<1>(s, lds, xp, chunks, firstMask, lastMask, rotate, out);
  }
}

// Lanes lo..hi-1 of a 16-lane mask.
__mmask16 laneRange(Index lo, Index hi) {
  uint32_t bits = 0;
  for (Index lane = std::max<Index>(0, lo); lane < std::min<Index>(16, hi); ++lane) bits |= 1u << lane;
  return static_cast<__mmask16>(bits);
}

void stackTimesVectorised(const ConstMapF& s, const ColMatF& x, ColMatF& y) {
  const Index rows = s.rows(), cols = s.cols(), l = x.cols();
  const Index lead = leadForAlignment(s.data(), rows, cols);
  const Index groups = (l + kDotCols - 1) / kDotCols, chunks = (cols + lead + 15) / 16;
  const float* packed = packForDots(x, groups, chunks, lead);
  // Lanes of the first and last chunks that hold columns of S.
  const __mmask16 firstMask = laneRange(lead, 16), lastMask = laneRange(0, cols + lead - (chunks - 1) * 16);
  // Summing each tile's lanes from lane `lead` on makes every entry of y the same sum, in
  // the same order, as with lead = 0: the bits do not depend on where the buffer lies.
  const Index tiles = (rows + kDotRows - 1) / kDotRows;
  perThreadRanges(tiles, 8, [&](Index t0, Index t1) {
    float out[kDotRows][kDotCols];
    for (Index tile = t0; tile < t1; ++tile) {
      const Index i0 = tile * kDotRows, mr = std::min(kDotRows, rows - i0);
      for (Index g = 0; g < groups; ++g) {
        dotTileRows(mr, s.data() + i0 * cols - lead, cols, packed + g * chunks * kDotCols * 16, chunks, firstMask,
                    lastMask, lead, out);
        for (Index j = 0; j < kDotCols && g * kDotCols + j < l; ++j) {
          float* column = y.data() + (g * kDotCols + j) * rows + i0;
          for (Index i = 0; i < mr; ++i) column[i] = out[i][j];
        }
      }
    }
  });
}

// --- z = S^T q: rank-one updates along S's rows --------------------------------------------
// A tile holds 64 consecutive columns of S (4 vectors) against 6 columns of q, and walks
// down a block of S's rows: z's tile stays in registers, S is read in place.
constexpr Index kAxpyWidth = 64;      // columns of S per tile
constexpr Index kAxpyCols = 6;        // columns of q per tile: 24 accumulators
constexpr Index kAxpyRowBlock = 512;  // a tile's 512 x 64 block of S (128 KiB) stays in L2 across q's groups

template <bool First, bool Tail>
inline void axpyTile(const float* s, Index lds, const float* qt, Index ldq, Index count, const __mmask16 masks[4],
                     float* z, Index ldz, Index zCols) {
  // Columns of z past zCols are neither read nor written (mask 0: no access, no fault);
  // no branch on them, so that GCC keeps c in registers.
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
    const float* row = s + i * lds;
    __m512 a[4];
    #pragma GCC unroll 16
    for (int v = 0; v < 4; ++v) a[v] = Tail ? _mm512_maskz_loadu_ps(masks[v], row + 16 * v) : _mm512_loadu_ps(row + 16 * v);
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
  // Tiles start `lead` columns before the rows (see leadForAlignment): aligned loads.
  const Index lead = leadForAlignment(s.data(), rows, cols);
  const Index tiles = (cols + lead + kAxpyWidth - 1) / kAxpyWidth;
  perThreadRanges(tiles, 2, [&](Index t0, Index t1) {
    for (Index i0 = 0; i0 < rows; i0 += kAxpyRowBlock) {
      const Index count = std::min(kAxpyRowBlock, rows - i0);
      for (Index tile = t0; tile < t1; ++tile) {
        const Index c0 = tile * kAxpyWidth - lead;
        __mmask16 masks[4];
        bool tail = false;
        for (int v = 0; v < 4; ++v) {
          masks[v] = laneRange(-(c0 + 16 * v), cols - (c0 + 16 * v));
          tail = tail || masks[v] != 0xFFFF;
        }
        for (Index g = 0; g < groups; ++g) {
          const Index zCols = std::min(kAxpyCols, l - g * kAxpyCols);
          const float* sBlock = s.data() + i0 * cols + c0;
          const float* qBlock = qt + i0 * ldq + g * kAxpyCols;
          float* zTile = z.data() + g * kAxpyCols * cols + c0;
          // Plain loads of S where the tile is whole (masked ones cost more in this loop).
          if (i0 == 0) {
            (tail ? axpyTile<true, true> : axpyTile<true, false>)(sBlock, cols, qBlock, ldq, count, masks, zTile, cols, zCols);
          } else {
            (tail ? axpyTile<false, true> : axpyTile<false, false>)(sBlock, cols, qBlock, ldq, count, masks, zTile, cols, zCols);
          }
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
