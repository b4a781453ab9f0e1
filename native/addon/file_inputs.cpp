#include "file_inputs.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "../core/errors.h"
#include "../core/finite.h"

#ifndef _WIN32
#include <fcntl.h>
#include <unistd.h>
#endif

namespace eigenlorax::addon {
namespace {

constexpr const char* kIo = "ERR_IO";

#ifndef _WIN32
void readExactly(const FileInput& in, unsigned char* out, size_t bytes) {
  size_t done = 0;
  while (done < bytes) {
    const size_t want = std::min(bytes - done, size_t{1} << 30);
    const ssize_t n = ::pread(in.fd, out + done, want, static_cast<off_t>(in.offset + static_cast<int64_t>(done)));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw CoreError(kIo, in.where + ": cannot read the tensor: " + std::strerror(errno));
    }
    if (n == 0) {
      throw CoreError(kIo, in.where + ": the file ended at byte " + std::to_string(in.offset + static_cast<int64_t>(done)) +
                               " while " + std::to_string(bytes) + " bytes were read from byte " +
                               std::to_string(in.offset) + " (was it changed or truncated after it was opened?)");
    }
    done += static_cast<size_t>(n);
  }
}
#endif

// As JavaScript's String(value) writes NaN and the infinities.
std::string nonFiniteName(float v) { return std::isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity"; }

}  // namespace

void readFileInput(const FileInput& in, float* dst) {
#ifdef _WIN32
  (void)in;
  (void)dst;
  throw CoreError(code::kInternal, "file inputs are not supported on this platform");
#else
  const size_t count = static_cast<size_t>(in.rows) * static_cast<size_t>(in.cols);
  const size_t bytes = count * dtypeSize(in.dtype);
  if (in.dtype == DType::F32) {
    readExactly(in, reinterpret_cast<unsigned char*>(dst), bytes);
  } else {
    thread_local std::vector<unsigned char> staging;  // reused from tensor to tensor
    if (staging.size() < bytes) staging.resize(bytes);
    readExactly(in, staging.data(), bytes);
    convert(staging.data(), in.dtype, dst, DType::F32, count);
  }
  if (!in.checkFinite || allFinite(dst, count)) return;
  for (size_t i = 0; i < count; ++i) {
    if (std::isfinite(dst[i])) continue;
    throw CoreError(code::kNonFinite, in.where + ": the factor holds " + nonFiniteName(dst[i]) + " at [" +
                                          std::to_string(i / static_cast<size_t>(in.cols)) + ", " +
                                          std::to_string(i % static_cast<size_t>(in.cols)) +
                                          "] (pass allowNonFinite: true to read it anyway)");
  }
#endif
}

bool fileInputsSupported() {
#ifdef _WIN32
  return false;
#else
  return true;
#endif
}

int duplicateDescriptor(int fd) {
#ifdef _WIN32
  (void)fd;
  return -1;
#else
  if (fd < 0) return -1;
  return ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
#endif
}

void closeDescriptor(int fd) {
#ifndef _WIN32
  if (fd >= 0) ::close(fd);
#else
  (void)fd;
#endif
}

void prefetchFileInputs(const FileInput* inputs, size_t count) {
#if !defined(_WIN32) && defined(POSIX_FADV_WILLNEED)  // not on macOS
  for (size_t i = 0; i < count; ++i) {
    const FileInput& in = inputs[i];
    const int64_t bytes = static_cast<int64_t>(in.rows) * in.cols * static_cast<int64_t>(dtypeSize(in.dtype));
    (void)::posix_fadvise(in.fd, static_cast<off_t>(in.offset), static_cast<off_t>(bytes), POSIX_FADV_WILLNEED);
  }
#else
  (void)inputs;
  (void)count;
#endif
}

void readFileInputs(const FileInput* inputs, size_t count) {
  // The error of the first input that fails, whichever thread sees it first: the same
  // message from run to run.
  long first = static_cast<long>(count);
  std::exception_ptr error;
  // One tensor per iteration (a 4096 x 16 factor is 128 KiB of bf16); the conversion inside
  // runs on this thread only (nested parallel regions are inactive).
#pragma omp parallel for schedule(dynamic)
  for (long i = 0; i < static_cast<long>(count); ++i) {
    try {
      readFileInput(inputs[i], inputs[i].dst);
    } catch (...) {
#pragma omp critical(eigenlorax_file_inputs_error)
      {
        if (i < first) {
          first = i;
          error = std::current_exception();
        }
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace eigenlorax::addon
