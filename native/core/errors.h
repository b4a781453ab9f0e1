// Errors raised by the core. The addon turns them into the library's typed JS error
// (EigenLoraxError) with the same stable code; nothing in the core ever aborts.
#pragma once
#include <stdexcept>
#include <string>

namespace eigenlorax {

// Stable codes, mirrored in lib/errors.ts.
namespace code {
inline constexpr const char* kInvalidArgument = "ERR_INVALID_ARGUMENT";
inline constexpr const char* kShapeMismatch = "ERR_SHAPE_MISMATCH";
inline constexpr const char* kNonFinite = "ERR_NON_FINITE";
inline constexpr const char* kOutOfMemory = "ERR_OUT_OF_MEMORY";
inline constexpr const char* kInternal = "ERR_INTERNAL";
}  // namespace code

class CoreError : public std::runtime_error {
 public:
  CoreError(const char* errorCode, const std::string& message)
      : std::runtime_error(message), code_(errorCode) {}
  const char* code() const noexcept { return code_; }

 private:
  const char* code_;
};

}  // namespace eigenlorax
