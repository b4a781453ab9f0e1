// Conversions between f32 and the storage dtypes of adapter files: bf16, f16, f64.
// Round to nearest, ties to even; NaN stays NaN (quietened), Inf stays Inf, overflow
// becomes Inf, f16 subnormals are kept. Sources may be unaligned byte buffers.
#pragma once
#include <cstddef>
#include <cstdint>

namespace eigenlorax {

enum class DType { F32 = 0, F16 = 1, BF16 = 2, F64 = 3 };

size_t dtypeSize(DType dtype);
const char* dtypeName(DType dtype);

// Element conversions, exposed for tests and for the CPU reference in other backends.
float bf16ToF32(uint16_t bits);
uint16_t f32ToBf16(float value);
float f16ToF32(uint16_t bits);
uint16_t f32ToF16(float value);

// Converts `count` elements from `src` (of `from`) into `dst` (of `to`); one side must be
// F32. Multi-threaded and vectorised. `src` may be unaligned; an f32 `dst` must be
// 4-byte aligned. `src` and `dst` must not overlap.
void convert(const void* src, DType from, void* dst, DType to, size_t count);

}  // namespace eigenlorax
