#include "dtype.h"

#include <cstring>

#include "errors.h"
#include "threads.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace eigenlorax {
namespace {

inline uint32_t bitsOf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float floatOf(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <typename T>
inline T load(const unsigned char* p, size_t i) {
  T v;
  std::memcpy(&v, p + i * sizeof(T), sizeof(T));
  return v;
}
template <typename T>
inline void store(unsigned char* p, size_t i, T v) {
  std::memcpy(p + i * sizeof(T), &v, sizeof(T));
}

// f32 bits to bf16 bits, round to nearest even. NaN: truncating could clear every mantissa
// bit left and make it Inf, so it stays a quiet NaN. A select, not a branch, and inline:
// called through the exported f32ToBf16, the loop below ran at 2 ns an element.
inline uint16_t bf16BitsOf(uint32_t u) {
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // ties to even
  const uint32_t quietNan = (u >> 16) | 0x0040u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quietNan : rounded);
}

// Each converter handles [begin, end). Plain loops over memcpy loads: GCC vectorises them.
void bf16Range(const unsigned char* s, float* d, size_t b, size_t e) {
  for (size_t i = b; i < e; ++i) d[i] = floatOf(static_cast<uint32_t>(load<uint16_t>(s, i)) << 16);
}
void toBf16Range(const unsigned char* s, unsigned char* d, size_t b, size_t e) {
  for (size_t i = b; i < e; ++i) store<uint16_t>(d, i, bf16BitsOf(load<uint32_t>(s, i)));
}
void f64Range(const unsigned char* s, float* d, size_t b, size_t e) {
  for (size_t i = b; i < e; ++i) d[i] = static_cast<float>(load<double>(s, i));
}
void toF64Range(const unsigned char* s, unsigned char* d, size_t b, size_t e) {
  for (size_t i = b; i < e; ++i) store<double>(d, i, static_cast<double>(load<float>(s, i)));
}
void f16Range(const unsigned char* s, float* d, size_t b, size_t e) {
  size_t i = b;
#if defined(__F16C__)
  for (; i + 8 <= e; i += 8) {
    __m128i h;
    std::memcpy(&h, s + i * 2, 16);
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < e; ++i) d[i] = f16ToF32(load<uint16_t>(s, i));
}
void toF16Range(const unsigned char* s, unsigned char* d, size_t b, size_t e) {
  size_t i = b;
#if defined(__F16C__)
  for (; i + 8 <= e; i += 8) {
    const __m256 f = _mm256_loadu_ps(reinterpret_cast<const float*>(s + i * 4));
    const __m128i h = _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    std::memcpy(d + i * 2, &h, 16);
  }
#endif
  for (; i < e; ++i) store<uint16_t>(d, i, f32ToF16(load<float>(s, i)));
}
void copyRange(const unsigned char* s, unsigned char* d, size_t b, size_t e) {
  std::memcpy(d + b * 4, s + b * 4, (e - b) * 4);
}

template <typename Fn>
void parallelRanges(size_t count, Fn fn) {
  constexpr size_t kChunk = size_t(1) << 16;  // below this, threads cost more than they save
  const int threads = currentThreads();
  const long chunks = static_cast<long>((count + kChunk - 1) / kChunk);
  if (threads <= 1 || chunks <= 1) {
    fn(size_t(0), count);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long c = 0; c < chunks; ++c) {
    const size_t b = static_cast<size_t>(c) * kChunk;
    fn(b, b + kChunk < count ? b + kChunk : count);
  }
}

}  // namespace

size_t dtypeSize(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::F64: return 8;
  }
  return 0;
}

const char* dtypeName(DType dtype) {
  switch (dtype) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::F64: return "f64";
  }
  return "?";
}

float bf16ToF32(uint16_t bits) { return floatOf(static_cast<uint32_t>(bits) << 16); }

uint16_t f32ToBf16(float value) { return bf16BitsOf(bitsOf(value)); }

float f16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponentMantissa = h & 0x7fffu;
  if (exponentMantissa >= 0x7c00u) {  // Inf or NaN: all exponent bits set
    const uint32_t mantissa = (exponentMantissa & 0x3ffu) << 13;
    // NaN comes out quiet, as the F16C instruction makes it.
    return floatOf(sign | 0x7f800000u | mantissa | (mantissa != 0 ? 0x00400000u : 0u));
  }
  // Shift into float position and rescale by 2^112: exact for normals and subnormals.
  const float magnitude = floatOf(exponentMantissa << 13) * 0x1p112f;
  return floatOf(sign | bitsOf(magnitude));
}

uint16_t f32ToF16(float value) {
  const uint32_t u = bitsOf(value);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // quiet NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504: Inf
  if (a < 0x38800000u) {
    // f16 subnormal (or zero): add 0.5 so the FPU's own round-to-nearest-even does the
    // rounding at the f16 subnormal step (2^-24), then read the low mantissa bits.
    const float shifted = floatOf(a) + 0.5f;
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(bitsOf(shifted) - bitsOf(0.5f)));
  }
  // Normal: rebias exponent (127 -> 15) and round the 13 dropped bits to nearest even.
  const uint32_t oddMantissa = (a >> 13) & 1u;
  const uint32_t rebased = a - ((127u - 15u) << 23) + 0xfffu + oddMantissa;
  return static_cast<uint16_t>(sign | (rebased >> 13));
}

void convert(const void* src, DType from, void* dst, DType to, size_t count) {
  const auto* s = static_cast<const unsigned char*>(src);
  auto* d = static_cast<unsigned char*>(dst);
  if (from == DType::F32 && to == DType::F32) {
    parallelRanges(count, [&](size_t b, size_t e) { copyRange(s, d, b, e); });
    return;
  }
  if (to == DType::F32) {
    auto* out = reinterpret_cast<float*>(d);  // the addon checks f32 outputs are aligned
    switch (from) {
      case DType::BF16: parallelRanges(count, [&](size_t b, size_t e) { bf16Range(s, out, b, e); }); return;
      case DType::F16: parallelRanges(count, [&](size_t b, size_t e) { f16Range(s, out, b, e); }); return;
      case DType::F64: parallelRanges(count, [&](size_t b, size_t e) { f64Range(s, out, b, e); }); return;
      case DType::F32: break;
    }
  }
  if (from == DType::F32) {
    switch (to) {
      case DType::BF16: parallelRanges(count, [&](size_t b, size_t e) { toBf16Range(s, d, b, e); }); return;
      case DType::F16: parallelRanges(count, [&](size_t b, size_t e) { toF16Range(s, d, b, e); }); return;
      case DType::F64: parallelRanges(count, [&](size_t b, size_t e) { toF64Range(s, d, b, e); }); return;
      case DType::F32: break;
    }
  }
  throw CoreError(code::kInvalidArgument, std::string("dtype: conversion from ") + dtypeName(from) + " to " +
                                              dtypeName(to) + " is not supported; one side must be f32");
}

}  // namespace eigenlorax
