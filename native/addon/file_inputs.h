// Factors that a job reads from adapter files itself, on its worker: the JS thread only
// says where each tensor is (an open descriptor, an offset, a dtype), so no typed array,
// no copy at the boundary and no f32 conversion runs on the event loop. A build over 256
// bf16 adapters otherwise spent about as long reading and copying on the JS thread as in
// its kernels.
#pragma once
#include <cstdint>
#include <string>

#include "../core/dtype.h"
#include "../core/matrix.h"

namespace eigenlorax::addon {

struct FileInput {
  int fd = -1;           // the job's own descriptor (a dup: JavaScript may close its own meanwhile)
  int64_t offset = 0;    // of the tensor's first byte
  DType dtype = DType::F32;
  Index rows = 0, cols = 0;
  bool checkFinite = true;
  std::string where;     // for errors: `<file>, tensor "<key>"`
  float* dst = nullptr;  // rows x cols, row-major: the job's memory
};

// Whether this platform reads file inputs (POSIX pread and dup).
bool fileInputsSupported();
// A duplicate of `fd`, or -1 when it is not an open descriptor.
int duplicateDescriptor(int fd);
void closeDescriptor(int fd);

// Asks the kernel to start reading every input's byte range into the page cache
// (posix_fadvise WILLNEED) and returns at once; a hint, so failures are ignored.
void prefetchFileInputs(const FileInput* inputs, size_t count);

// On a worker: reads and converts one input into `dst` (rows x cols floats), on this thread;
// errors as readFileInputs.
void readFileInput(const FileInput& input, float* dst);

// On the worker: reads and converts every input (in parallel). Throws CoreError ERR_IO for
// a failed or short read, ERR_NON_FINITE (naming the tensor and element) when checkFinite
// and the tensor holds NaN or Inf.
void readFileInputs(const FileInput* inputs, size_t count);

}  // namespace eigenlorax::addon
