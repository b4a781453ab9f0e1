// Reading and checking the arguments of a call: every size and type is checked here, on
// the JS thread, before any work is queued or any memory is mapped. Views keep pointers
// into JS-owned buffers; `Keep` holds references so those buffers outlive the work.
#pragma once
#include <napi.h>

#include <string>
#include <vector>

#include "../core/matrix.h"

namespace eigenlorax::addon {

class Keep {
 public:
  void add(const Napi::Value& value) { refs_.push_back(Napi::Persistent(value.As<Napi::Object>())); }

 private:
  std::vector<Napi::ObjectReference> refs_;
};

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

double readNumber(Napi::Env env, const Napi::Object& args, const char* name);
// A safe non-negative integer in [min, max].
int64_t readInteger(Napi::Env env, const Napi::Object& args, const char* name, int64_t min, int64_t max);
std::string readString(Napi::Env env, const Napi::Object& args, const char* name);

}  // namespace eigenlorax::addon
