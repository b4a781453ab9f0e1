// SHA-256 (FIPS 180-4), streamed: the content digests of eigenlorax's own files and the
// subspace id, hashed on the compute thread instead of the event loop. Uses the x86 SHA
// extensions where the CPU has them (about 2 GB/s a core, as OpenSSL), portable code
// elsewhere; both give the same digest.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>

namespace eigenlorax {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t bytes);
  // The digest of everything given; the object is spent afterwards.
  std::array<uint8_t, 32> finish();

  // Whether the SHA extensions are used (false where absent or when the environment
  // variable EIGENLORAX_SHA256_PORTABLE is set, which tests use to check the other path).
  static bool accelerated();

 private:
  uint32_t state_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t total_ = 0;
};

}  // namespace eigenlorax
