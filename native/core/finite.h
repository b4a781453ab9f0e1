// Whether arrays hold only finite numbers: exponent bits all set means NaN or Inf. Branch-free
// loops over the bit patterns that the compiler vectorises (Eigen's allFinite() computes
// x - x and compares coefficient by coefficient, ~30x slower; std::isfinite with an early
// exit does not vectorise). Single-threaded: callers over large arrays split the work.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "matrix.h"

namespace eigenlorax {

// True when no entry has every exponent bit set (kExponent: the exponent's mask).
template <typename Float, typename Bits, Bits kExponent>
bool allFiniteBits(const Float* data, size_t count) {
  static_assert(sizeof(Float) == sizeof(Bits), "bit pattern of the float's size");
  Bits bad = 0;
  for (size_t i = 0; i < count; ++i) {
    Bits bits;
    std::memcpy(&bits, data + i, sizeof bits);
    bad |= static_cast<Bits>((bits & kExponent) == kExponent);
  }
  return bad == 0;
}

inline bool allFinite(const float* data, size_t count) { return allFiniteBits<float, uint32_t, 0x7f800000u>(data, count); }
inline bool allFinite(const double* data, size_t count) {
  return allFiniteBits<double, uint64_t, 0x7ff0000000000000ull>(data, count);
}

// The largest |entry| as its bit pattern (for floats, the order of the patterns without the
// sign is the order of the magnitudes); >= 0x7f800000 means a NaN or Inf is there.
inline uint32_t maxAbsBits(const float* data, size_t count) {
  uint32_t top = 0;
  for (size_t i = 0; i < count; ++i) {
    uint32_t bits;
    std::memcpy(&bits, data + i, 4);
    const uint32_t magnitude = bits & 0x7fffffffu;
    top = magnitude > top ? magnitude : top;
  }
  return top;
}

inline bool allFinite(ConstMatView m) { return allFinite(m.data, static_cast<size_t>(m.rows * m.cols)); }

}  // namespace eigenlorax
