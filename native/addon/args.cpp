#include "args.h"

#include <cfloat>
#include <charconv>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#include "../core/errors.h"
#include "../core/finite.h"
#include "../core/large_buffers.h"
#include "env.h"

namespace eigenlorax::addon {
namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;

std::string describe(const Napi::Value& v) {
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsNumber()) {
    const double d = v.As<Napi::Number>().DoubleValue();
    if (std::isnan(d)) return "NaN";
    char text[32];
    const auto end = std::to_chars(text, text + sizeof text, d).ptr;  // shortest: 2, 0.5, 1e+39
    return std::string(text, end);
  }
  if (v.IsTypedArray()) return "a typed array";
  if (v.IsArray()) return "an array";
  if (v.IsString()) return "a string";
  if (v.IsBoolean()) return "a boolean";
  if (v.IsFunction()) return "a function";
  return "an object";
}

}  // namespace

[[noreturn]] void badArgument(Napi::Env env, const std::string& name, const std::string& expected,
                              const Napi::Value& received) {
  throwError(env, code::kInvalidArgument, name + ": expected " + expected + ", received " + describe(received));
}

namespace {

Napi::TypedArray requireTypedArray(Napi::Env env, const Napi::Value& v, const std::string& name, bool floatOnly) {
  if (!v.IsTypedArray()) badArgument(env, name, floatOnly ? "a Float32Array" : "a typed array", v);
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (floatOnly && ta.TypedArrayType() != napi_float32_array) badArgument(env, name, "a Float32Array", v);
  if (ta.ArrayBuffer().IsDetached()) {
    throwError(env, "ERR_DETACHED_BUFFER", name + ": the typed array's buffer is detached (transferred or freed)");
  }
  return ta;
}

// Registers the array with `overlaps` (its own memory) and returns the job's memory for it.
void* track(Napi::Env env, const Napi::TypedArray& ta, const std::string& name, bool writable, Keep& keep,
            Overlaps& overlaps) {
  const void* data = typedArrayData(env, ta);
  const size_t bytes = ta.ByteLength();
  const napi_typedarray_type type = ta.TypedArrayType();
  const Keep::Elem elem = type == napi_float32_array   ? Keep::Elem::F32
                          : type == napi_float64_array ? Keep::Elem::F64
                          : type == napi_int32_array   ? Keep::Elem::I32
                                                       : Keep::Elem::Raw;
  if (writable) {
    overlaps.output(name, data, bytes);
    return keep.output(env, ta, name, data, bytes, elem);
  }
  overlaps.input(name, data, bytes);
  return keep.input(env, data, bytes, elem);
}

// No NaN or Inf among `bytes` of floats (F32/F64; other kinds always pass). The job's
// blocks are 64-byte aligned.
bool allFinite(const unsigned char* data, size_t bytes, Keep::Elem elem) {
  if (elem == Keep::Elem::F32) return eigenlorax::allFinite(reinterpret_cast<const float*>(data), bytes / 4);
  if (elem == Keep::Elem::F64) return eigenlorax::allFinite(reinterpret_cast<const double*>(data), bytes / 8);
  return true;
}

int64_t requireDimension(Napi::Env env, const Napi::Value& v, const std::string& name) {
  if (!v.IsNumber()) badArgument(env, name, "a positive integer", v);
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 1 && d <= kMaxSafeInteger && std::floor(d) == d)) badArgument(env, name, "a positive integer", v);
  return static_cast<int64_t>(d);
}

template <typename View>
View readMatrixImpl(Napi::Env env, const Napi::Value& value, const std::string& name, bool writable, Keep& keep,
                    Overlaps& overlaps) {
  if (!value.IsObject() || value.IsTypedArray()) {
    badArgument(env, name, "a matrix { rows, cols, data: Float32Array }", value);
  }
  const Napi::Object m = value.As<Napi::Object>();
  const std::string& prefix = name;
  const int64_t rows = requireDimension(env, m.Get("rows"), prefix + ".rows");
  const int64_t cols = requireDimension(env, m.Get("cols"), prefix + ".cols");
  const Napi::TypedArray ta = requireTypedArray(env, m.Get("data"), prefix + ".data", true);
  const double want = static_cast<double>(rows) * static_cast<double>(cols);
  if (want != static_cast<double>(ta.ElementLength())) {
    throwError(env, code::kShapeMismatch, prefix + ": data has " + std::to_string(ta.ElementLength()) +
                                              " elements but rows x cols = " + shapeString(rows, cols) + " needs " +
                                              std::to_string(static_cast<int64_t>(want)));
  }
  return View{static_cast<float*>(track(env, ta, name, writable, keep, overlaps)), rows, cols};
}

}  // namespace

void* typedArrayData(Napi::Env env, const Napi::TypedArray& array) {
  void* data = nullptr;
  const napi_status status = napi_get_typedarray_info(env, array, nullptr, nullptr, &data, nullptr, nullptr);
  NAPI_THROW_IF_FAILED(env, status, nullptr);
  return data;
}

namespace {

// Blocks of 64 KiB or more (one LoRA factor, 4096 x 16 floats, is 256 KiB) that jobs
// released, kept (up to 256 MiB) for the next jobs: the first touch of fresh pages costs a
// page fault each, which on some VMs is most of the time of a copy (24 MB: 400 ms into fresh pages, 15 ms into reused ones, on the test VM).
class BlockCache {
 public:
  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();  // never destroyed, like the compute thread
    return *cache;
  }
  // A cached block of at least `bytes` (and at most twice that), or null.
  unsigned char* take(size_t bytes, size_t& capacity) {
    if (bytes < kMin) return nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.lower_bound(bytes);
    if (it == free_.end() || it->first > 2 * bytes) return nullptr;
    capacity = it->first;
    unsigned char* p = it->second;
    total_ -= it->first;
    free_.erase(it);
    return p;
  }
  // Keeps the block, or says no (then the caller frees it).
  bool give(unsigned char* p, size_t capacity) {
    if (capacity < kMin) return false;
    std::lock_guard<std::mutex> lock(mutex_);
    if (total_ + capacity > kMax) return false;
    free_.emplace(capacity, p);
    total_ += capacity;
    return true;
  }

 private:
  static constexpr size_t kMin = size_t{64} << 10, kMax = size_t{256} << 20;
  std::mutex mutex_;
  std::multimap<size_t, unsigned char*> free_;
  size_t total_ = 0;
};

}  // namespace

Keep::~Keep() {
  for (OwnedBlock* b : lent_) returnOwned(b);
  for (const FileInput& f : files_) closeDescriptor(f.fd);
  for (const Block& b : blocks_) {
    if (!BlockCache::instance().give(b.data, b.capacity)) freeLarge(b.data, b.capacity);
  }
}

unsigned char* Keep::allocate(Napi::Env env, size_t bytes) {
  size_t capacity = 0;
  unsigned char* p = BlockCache::instance().take(bytes, capacity);
  try {
    // 64-byte aligned like Eigen's own allocations; large ones in huge pages where offered.
    if (p == nullptr) {
      capacity = largeCapacity(bytes > 0 ? bytes : 1);  // never null, even for no bytes
      p = static_cast<unsigned char*>(allocateLarge(capacity));
    }
    blocks_.push_back({p, capacity});
  } catch (const std::bad_alloc&) {
    if (p != nullptr) freeLarge(p, capacity);
    throwError(env, code::kOutOfMemory, "out of memory copying " + std::to_string(bytes) + " bytes of arguments");
  }
  return p;
}

void* Keep::input(Napi::Env env, const void* data, size_t bytes, Elem elem) {
  if (bytes > 0) {
    lent_.reserve(lent_.size() + 1);  // so that push_back cannot throw with a count taken
    if (OwnedBlock* block = lendOwned(data, bytes)) {
      lent_.push_back(block);
      inputs_.push_back({static_cast<const unsigned char*>(data), bytes, elem});
      return const_cast<void*>(data);
    }
  }
  unsigned char* own = allocate(env, bytes);
  if (bytes > 0) std::memcpy(own, data, bytes);
  inputs_.push_back({own, bytes, elem});
  return own;
}

void* Keep::output(Napi::Env env, const Napi::TypedArray& array, const std::string& name, const void* data,
                   size_t bytes, Elem elem) {
  if (bytes > 0) {
    lent_.reserve(lent_.size() + 1);
    outputs_.reserve(outputs_.size() + 1);  // neither push_back may throw with a count taken
    if (OwnedBlock* block = lendOwned(data, bytes)) {
      lent_.push_back(block);
      outputs_.push_back({Napi::Persistent(array), name, static_cast<unsigned char*>(const_cast<void*>(data)), bytes, elem});
      outputs_.back().inPlace = true;
      return const_cast<void*>(data);
    }
  }
  unsigned char* own = allocate(env, bytes);
  if (bytes > 0) std::memcpy(own, data, bytes);
  outputs_.push_back({Napi::Persistent(array), name, own, bytes, elem});
  return own;
}

float* Keep::fileInput(Napi::Env env, FileInput input, const std::string& name) {
  const size_t bytes = static_cast<size_t>(input.rows) * static_cast<size_t>(input.cols) * sizeof(float);
  input.fd = duplicateDescriptor(input.fd);
  if (input.fd < 0) throwError(env, code::kInvalidArgument, name + ".fd: not an open file descriptor");
  files_.push_back(input);  // owned from here: closed by the destructor, whatever happens next
  if (deferred_) {
    deferredUnchecked_ = deferredUnchecked_ || !input.checkFinite;
    return nullptr;
  }
  float* own = reinterpret_cast<float*>(allocate(env, bytes));
  files_.back().dst = own;
  inputs_.push_back({reinterpret_cast<unsigned char*>(own), bytes, Elem::F32});
  return own;
}

void Keep::noteFiniteOutputs() {
  for (Output& o : outputs_) o.startedFinite = allFinite(o.data, o.bytes, o.elem);
}

void Keep::requireFiniteResult() const {
  for (const Output& o : outputs_) {
    if (!o.startedFinite || allFinite(o.data, o.bytes, o.elem)) continue;
    if (deferredUnchecked_) return;  // NaN or Inf may have been given: it propagates
    for (const Span& in : inputs_) {
      if (!allFinite(in.data, in.bytes, in.elem)) return;  // NaN or Inf given: it propagates
    }
    throw CoreError(code::kNonFinite, o.name +
                                          ": the result holds NaN or Inf although every input is finite (float32 "
                                          "overflow: a scale or inputs too large)");
  }
}

void Keep::writeBack(Napi::Env env) const {
  std::vector<void*> targets;
  for (const Output& o : outputs_) {
    const Napi::TypedArray array = o.array.Value();
    const bool detached = array.ArrayBuffer().IsDetached();
    const size_t now = detached ? 0 : array.ByteLength();
    if (detached || now != o.bytes) {
      throwError(env, "ERR_DETACHED_BUFFER",
                 o.name + ": the output's buffer was detached, transferred or resized while the call ran (" +
                     std::to_string(o.bytes) + " bytes then, " + std::to_string(now) + " now); " +
                     (o.inPlace ? "the result is lost" : "nothing was written"));
    }
    targets.push_back(typedArrayData(env, array));
  }
  for (size_t i = 0; i < outputs_.size(); ++i) {
    if (outputs_[i].bytes > 0 && !outputs_[i].inPlace) std::memcpy(targets[i], outputs_[i].data, outputs_[i].bytes);
  }
}

void Overlaps::check(Napi::Env env) const {
  for (size_t i = 0; i < spans_.size(); ++i) {
    for (size_t j = i + 1; j < spans_.size(); ++j) {
      const Span &a = spans_[i], &b = spans_[j];
      if (!a.writable && !b.writable) continue;
      const auto* pa = static_cast<const unsigned char*>(a.data);
      const auto* pb = static_cast<const unsigned char*>(b.data);
      if (a.bytes > 0 && b.bytes > 0 && pa < pb + b.bytes && pb < pa + a.bytes) {
        throwError(env, code::kInvalidArgument,
                   a.name + " and " + b.name + " share memory; outputs must not overlap other arguments");
      }
    }
  }
}

Napi::Object requireObject(Napi::Env env, const Napi::Value& value, const char* name) {
  if (!value.IsObject()) badArgument(env, name, "an object", value);
  return value.As<Napi::Object>();
}

ConstMatView readMatrix(Napi::Env env, const Napi::Object& args, const char* name, Keep& keep, Overlaps& overlaps) {
  return readMatrixValue(env, args.Get(name), name, keep, overlaps);
}

MatView readOutMatrix(Napi::Env env, const Napi::Object& args, const char* name, Keep& keep, Overlaps& overlaps) {
  return readOutMatrixValue(env, args.Get(name), name, keep, overlaps);
}

ConstMatView readMatrixValue(Napi::Env env, const Napi::Value& value, const std::string& name, Keep& keep,
                             Overlaps& overlaps) {
  const MatView v = readMatrixImpl<MatView>(env, value, name, false, keep, overlaps);
  return {v.data, v.rows, v.cols};
}

MatView readOutMatrixValue(Napi::Env env, const Napi::Value& value, const std::string& name, Keep& keep,
                           Overlaps& overlaps) {
  return readMatrixImpl<MatView>(env, value, name, true, keep, overlaps);
}

ConstMatView readFactorValue(Napi::Env env, const Napi::Value& value, const std::string& name, Keep& keep,
                             Overlaps& overlaps) {
  if (!value.IsObject() || value.IsTypedArray() || !value.As<Napi::Object>().Has("fd")) {
    return readMatrixValue(env, value, name, keep, overlaps);
  }
  if (!fileInputsSupported()) throwError(env, code::kInvalidArgument, name + ": file inputs are not supported on this platform");
  const Napi::Object o = value.As<Napi::Object>();
  FileInput in;
  in.rows = requireDimension(env, o.Get("rows"), name + ".rows");
  in.cols = requireDimension(env, o.Get("cols"), name + ".cols");
  const auto integer = [&](const char* key, double max) {
    const Napi::Value v = o.Get(key);
    const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0 && d <= max && std::floor(d) == d)) badArgument(env, name + "." + key, "a non-negative integer", v);
    return static_cast<int64_t>(d);
  };
  in.fd = static_cast<int>(integer("fd", 2147483647.0));
  in.offset = integer("offset", kMaxSafeInteger);
  const Napi::Value dtype = o.Get("dtype");
  const std::string dt = dtype.IsString() ? dtype.As<Napi::String>().Utf8Value() : "";
  if (dt == "f32") in.dtype = DType::F32;
  else if (dt == "f16") in.dtype = DType::F16;
  else if (dt == "bf16") in.dtype = DType::BF16;
  else badArgument(env, name + ".dtype", "'f32', 'f16' or 'bf16'", dtype);
  const Napi::Value where = o.Get("where");
  if (!where.IsString()) badArgument(env, name + ".where", "a string", where);
  in.where = where.As<Napi::String>().Utf8Value();
  const Napi::Value check = o.Get("checkFinite");
  if (!check.IsBoolean()) badArgument(env, name + ".checkFinite", "a boolean", check);
  in.checkFinite = check.As<Napi::Boolean>().Value();
  if (static_cast<double>(in.rows) * static_cast<double>(in.cols) * 8 > kMaxSafeInteger) {
    throwError(env, code::kInvalidArgument, name + ": " + shapeString(in.rows, in.cols) + " is too large");
  }
  const Index rows = in.rows, cols = in.cols;
  return {keep.fileInput(env, std::move(in), name), rows, cols};
}

const int32_t* readInt32(Napi::Env env, const Napi::Object& args, const char* name, size_t length, Keep& keep,
                         Overlaps& overlaps) {
  const Napi::Value v = args.Get(name);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    badArgument(env, name, "an Int32Array", v);
  }
  Napi::Int32Array ta = v.As<Napi::Int32Array>();
  if (ta.ArrayBuffer().IsDetached()) {
    throwError(env, "ERR_DETACHED_BUFFER", std::string(name) + ": the typed array's buffer is detached");
  }
  if (ta.ElementLength() != length) {
    throwError(env, code::kShapeMismatch, std::string(name) + ": expected " + std::to_string(length) +
                                              " elements, received " + std::to_string(ta.ElementLength()));
  }
  return static_cast<const int32_t*>(track(env, ta, name, false, keep, overlaps));
}

Napi::Array readArray(Napi::Env env, const Napi::Object& args, const char* name) {
  const Napi::Value v = args.Get(name);
  if (!v.IsArray()) badArgument(env, name, "an array", v);
  return v.As<Napi::Array>();
}

double* readFloat64Out(Napi::Env env, const Napi::Object& args, const char* name, size_t length, Keep& keep,
                       Overlaps& overlaps) {
  const Napi::Value v = args.Get(name);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    badArgument(env, name, "a Float64Array", v);
  }
  Napi::Float64Array ta = v.As<Napi::Float64Array>();
  if (ta.ArrayBuffer().IsDetached()) {
    throwError(env, "ERR_DETACHED_BUFFER", std::string(name) + ": the typed array's buffer is detached");
  }
  if (ta.ElementLength() != length) {
    throwError(env, code::kShapeMismatch, std::string(name) + ": expected " + std::to_string(length) +
                                              " elements, received " + std::to_string(ta.ElementLength()));
  }
  return static_cast<double*>(track(env, ta, name, true, keep, overlaps));
}

ConstMatView readOptionalMatrix(Napi::Env env, const Napi::Object& args, const char* name, Keep& keep,
                                Overlaps& overlaps) {
  const Napi::Value v = args.Get(name);
  if (v.IsNull() || v.IsUndefined()) return {};
  return readMatrix(env, args, name, keep, overlaps);
}

MatView readOptionalOutMatrix(Napi::Env env, const Napi::Object& args, const char* name, Keep& keep,
                              Overlaps& overlaps) {
  const Napi::Value v = args.Get(name);
  if (v.IsNull() || v.IsUndefined()) return {};
  return readOutMatrix(env, args, name, keep, overlaps);
}

const float* readVector(Napi::Env env, const Napi::Object& args, const char* name, size_t length, bool optional,
                        bool writable, Keep& keep, Overlaps& overlaps) {
  const Napi::Value v = args.Get(name);
  if (optional && (v.IsNull() || v.IsUndefined())) return nullptr;
  const Napi::TypedArray ta = requireTypedArray(env, v, name, true);
  if (ta.ElementLength() != length) {
    throwError(env, code::kShapeMismatch, std::string(name) + ": expected " + std::to_string(length) +
                                              " elements, received " + std::to_string(ta.ElementLength()));
  }
  return static_cast<const float*>(track(env, ta, name, writable, keep, overlaps));
}

Bytes readBytes(Napi::Env env, const Napi::Object& args, const char* name, bool writable, Keep& keep,
                Overlaps& overlaps) {
  const Napi::TypedArray ta = requireTypedArray(env, args.Get(name), name, false);
  return {track(env, ta, name, writable, keep, overlaps), ta.ByteLength()};
}

Bytes readBytesValue(Napi::Env env, const Napi::Value& value, const std::string& name, Keep& keep, Overlaps& overlaps) {
  const Napi::TypedArray ta = requireTypedArray(env, value, name, false);
  return {track(env, ta, name, false, keep, overlaps), ta.ByteLength()};
}

double readScaleValue(Napi::Env env, const Napi::Value& v, const std::string& name) {
  const char* expected = "a number finite in float32 (|x| <= 3.4e38)";
  if (!v.IsNumber()) badArgument(env, name, expected, v);
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(std::fabs(d) <= static_cast<double>(FLT_MAX))) badArgument(env, name, expected, v);
  return d;
}

double readNumber(Napi::Env env, const Napi::Object& args, const char* name) {
  const Napi::Value v = args.Get(name);
  if (!v.IsNumber()) badArgument(env, name, "a finite number", v);
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) badArgument(env, name, "a finite number", v);
  return d;
}

int64_t readInteger(Napi::Env env, const Napi::Object& args, const char* name, int64_t min, int64_t max) {
  const Napi::Value v = args.Get(name);
  const std::string expected = "an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
  if (!v.IsNumber()) badArgument(env, name, expected, v);
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= static_cast<double>(min) && d <= static_cast<double>(max) && std::floor(d) == d)) {
    badArgument(env, name, expected, v);
  }
  return static_cast<int64_t>(d);
}

std::string readString(Napi::Env env, const Napi::Object& args, const char* name) {
  const Napi::Value v = args.Get(name);
  if (!v.IsString()) badArgument(env, name, "a string", v);
  return v.As<Napi::String>().Utf8Value();
}

int readChoice(Napi::Env env, const Napi::Object& args, const char* name, std::initializer_list<const char*> names) {
  const Napi::Value v = args.Get(name);
  std::string expected;
  for (const char* n : names) expected += (expected.empty() ? "one of '" : ", '") + std::string(n) + "'";
  if (!v.IsString()) badArgument(env, name, expected, v);
  const std::string s = v.As<Napi::String>().Utf8Value();
  int index = 0;
  for (const char* n : names) {
    if (s == n) return index;
    ++index;
  }
  badArgument(env, name, expected, v);
}

}  // namespace eigenlorax::addon
