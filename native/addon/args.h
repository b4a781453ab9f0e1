// Reading and checking the arguments of a call: every size and type is checked here, on
// the JS thread, before any work is queued. Kernels never see memory JavaScript can free:
// `Keep` gives each job its own copy of the typed arrays it reads and writes (see there
// why), or a count on the addon's own memory for arrays over it (owned_buffers.h).
#pragma once
#include <napi.h>

#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "../core/matrix.h"
#include "file_inputs.h"
#include "owned_buffers.h"

namespace eigenlorax::addon {

// What a job holds from its call until it settles: references to the objects it needs
// alive (device handles), and its own memory for every typed array it reads or writes.
//
// Why copies: a reference keeps a typed array object alive, not its memory. While a job
// runs, JavaScript can detach the buffer (a structuredClone or postMessage transfer, then
// a collection), shrink a resizable one, or send it to another thread; the memory is then
// freed or unmapped, and Node-API has no way to hold it (that needs V8's BackingStore, not
// ABI-stable). So inputs are copied on the JS thread when they are read; outputs are
// written into the job's memory (filled from the array first: some are read, target +=)
// and copied back on the JS thread when the job ends, only if every output is still
// attached and as long as it was; otherwise the call fails with ERR_DETACHED_BUFFER and
// writes nothing. Reading everything into the job's memory at once also closes the gap
// where a getter on a later argument detaches an earlier one. SharedArrayBuffers are
// copied the same way. Cost: bench/boundary.ts. The exception is memory the addon owns
// (owned_buffers.h), which it can hold: arrays over it are used in place.
class Keep {
 public:
  // What the elements are, for the finiteness checks (Raw: not checked).
  enum class Elem { F32, F64, I32, Raw };

  Keep() = default;
  Keep(const Keep&) = delete;
  Keep& operator=(const Keep&) = delete;
  ~Keep();

  void add(const Napi::Value& value) { refs_.push_back(Napi::Persistent(value.As<Napi::Object>())); }
  // The job's copy of the array's `bytes` at `data` (read now; never null), or `data`
  // itself when it lies in an owned buffer (owned_buffers.h), then held until the job ends.
  void* input(Napi::Env env, const void* data, size_t bytes, Elem elem);
  // The job's memory for an output array, filled from it; copied back by writeBack. An
  // owned buffer is written in place instead (held until the job ends): a call that fails
  // may then have written part of it.
  void* output(Napi::Env env, const Napi::TypedArray& array, const std::string& name, const void* data,
               size_t bytes, Elem elem);
  // On the JS thread after the kernel ran: copies every output back, or throws
  // ERR_DETACHED_BUFFER (and writes nothing) when one was detached or resized meanwhile.
  void writeBack(Napi::Env env) const;

  // The job's memory for a float factor stored in a file (see file_inputs.h): `input.fd` is
  // the caller's descriptor, duplicated now; the memory is filled by readFiles(). After
  // deferFileReads(), no memory: null is returned, and the kernel reads the input itself
  // with readDeferred() when it needs it.
  float* fileInput(Napi::Env env, FileInput input, const std::string& name);
  void deferFileReads() { deferred_ = true; }
  // On a worker: file input `index` read and converted into `dst` (rows x cols floats).
  void readDeferred(size_t index, float* dst) const { readFileInput(files_[index], dst); }
  // On the worker, before the kernel: reads every file input (ERR_IO, ERR_NON_FINITE).
  void readFiles() const {
    if (!files_.empty() && !deferred_) readFileInputs(files_.data(), files_.size());
  }
  bool hasFiles() const { return !files_.empty(); }
  // Asks the kernel to read the file inputs' ranges ahead (see prefetchFileInputs).
  void prefetchFiles() const { prefetchFileInputs(files_.data(), files_.size()); }

  // Float32 overflow must not pass silently (an Inf-producing scale, products beyond
  // 3.4e38): on the worker, before the kernel, notes which outputs start finite; after
  // it, throws ERR_NON_FINITE naming the first float output that now holds NaN or Inf
  // although it started finite and every float input is finite. NaN or Inf given in
  // propagates as before. Costs one pass over the outputs; the inputs are read only when
  // an output is bad.
  void noteFiniteOutputs();
  void requireFiniteResult() const;

 private:
  struct Block {
    unsigned char* data;
    size_t capacity;
  };
  struct Span {
    const unsigned char* data;
    size_t bytes;
    Elem elem;
  };
  struct Output {
    Napi::Reference<Napi::TypedArray> array;
    std::string name;
    unsigned char* data;
    size_t bytes;
    Elem elem;
    bool startedFinite = true;
    bool inPlace = false;  // an owned buffer, written where it is
  };
  unsigned char* allocate(Napi::Env env, size_t bytes);

  std::vector<Napi::ObjectReference> refs_;
  std::vector<Block> blocks_;
  std::vector<OwnedBlock*> lent_;
  std::vector<Span> inputs_;
  std::vector<Output> outputs_;
  std::vector<FileInput> files_;
  bool deferred_ = false;
  bool deferredUnchecked_ = false;  // a deferred input may hold NaN or Inf (not checked when read)
};

// The data pointer of any typed array (over an ArrayBuffer or a SharedArrayBuffer).
void* typedArrayData(Napi::Env env, const Napi::TypedArray& array);

// Writable outputs must not overlap any input or each other.
class Overlaps {
 public:
  void input(std::string name, const void* data, size_t bytes) { spans_.push_back({std::move(name), data, bytes, false}); }
  void output(std::string name, const void* data, size_t bytes) { spans_.push_back({std::move(name), data, bytes, true}); }
  void check(Napi::Env env) const;

 private:
  struct Span {
    std::string name;
    const void* data;
    size_t bytes;
    bool writable;
  };
  std::vector<Span> spans_;
};

Napi::Object requireObject(Napi::Env env, const Napi::Value& value, const char* name);

// { rows, cols, data: Float32Array } with data.length == rows * cols.
ConstMatView readMatrix(Napi::Env env, const Napi::Object& args, const char* name, Keep& keep, Overlaps& overlaps);
MatView readOutMatrix(Napi::Env env, const Napi::Object& args, const char* name, Keep& keep, Overlaps& overlaps);
// A matrix given as a value (an array element), named `name` in errors ("adapters[2].A").
ConstMatView readMatrixValue(Napi::Env env, const Napi::Value& value, const std::string& name, Keep& keep,
                             Overlaps& overlaps);
MatView readOutMatrixValue(Napi::Env env, const Napi::Value& value, const std::string& name, Keep& keep,
                           Overlaps& overlaps);
// A factor: a matrix, or a tensor the job reads from a file,
// { rows, cols, fd, offset, dtype: 'f32' | 'f16' | 'bf16', where, checkFinite }.
ConstMatView readFactorValue(Napi::Env env, const Napi::Value& value, const std::string& name, Keep& keep,
                             Overlaps& overlaps);
Napi::Array readArray(Napi::Env env, const Napi::Object& args, const char* name);
// A writable Float64Array of exactly `length` elements.
double* readFloat64Out(Napi::Env env, const Napi::Object& args, const char* name, size_t length, Keep& keep,
                       Overlaps& overlaps);
// An Int32Array of exactly `length` elements (read-only).
const int32_t* readInt32(Napi::Env env, const Napi::Object& args, const char* name, size_t length, Keep& keep,
                         Overlaps& overlaps);
[[noreturn]] void badArgument(Napi::Env env, const std::string& name, const std::string& expected,
                              const Napi::Value& received);

// The same, but `null`/`undefined` gives an empty view.
ConstMatView readOptionalMatrix(Napi::Env env, const Napi::Object& args, const char* name, Keep& keep,
                                Overlaps& overlaps);
MatView readOptionalOutMatrix(Napi::Env env, const Napi::Object& args, const char* name, Keep& keep,
                              Overlaps& overlaps);

// A Float32Array of exactly `length` elements (or null/undefined when optional).
const float* readVector(Napi::Env env, const Napi::Object& args, const char* name, size_t length, bool optional,
                        bool writable, Keep& keep, Overlaps& overlaps);

// Any typed array, as raw bytes.
struct Bytes {
  void* data = nullptr;
  size_t bytes = 0;
};
Bytes readBytes(Napi::Env env, const Napi::Object& args, const char* name, bool writable, Keep& keep,
                Overlaps& overlaps);
// Any typed array given as a value (an array element), read-only, named `name` in errors.
Bytes readBytesValue(Napi::Env env, const Napi::Value& value, const std::string& name, Keep& keep, Overlaps& overlaps);

double readNumber(Napi::Env env, const Napi::Object& args, const char* name);
// A scale factor: a number that is finite in float32 (|x| <= 3.4e38: 1e39 is Inf there).
double readScaleValue(Napi::Env env, const Napi::Value& value, const std::string& name);
inline float readScale(Napi::Env env, const Napi::Object& args, const char* name) {
  return static_cast<float>(readScaleValue(env, args.Get(name), name));
}
// A safe non-negative integer in [min, max].
int64_t readInteger(Napi::Env env, const Napi::Object& args, const char* name, int64_t min, int64_t max);
std::string readString(Napi::Env env, const Napi::Object& args, const char* name);
// Enums cross the boundary as strings: one of `names`, read as its index (so `names` lists
// the C++ enum's values in order).
int readChoice(Napi::Env env, const Napi::Object& args, const char* name, std::initializer_list<const char*> names);

}  // namespace eigenlorax::addon
