#include "args.h"

#include <cmath>

#include "../core/errors.h"
#include "env.h"

namespace eigenlorax::addon {
namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;

std::string describe(const Napi::Value& v) {
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsNumber()) {
    const double d = v.As<Napi::Number>().DoubleValue();
    return std::isnan(d) ? "NaN" : std::to_string(d);
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
  throwError(env, code::kInvalidArgument, "Expected " + expected + " for " + name + " but received " +
                                              describe(received));
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
  float* data = ta.As<Napi::Float32Array>().Data();
  keep.add(ta);
  if (writable) overlaps.output(name, data, ta.ByteLength());
  else overlaps.input(name, data, ta.ByteLength());
  return View{data, rows, cols};
}

}  // namespace

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
                                              " elements but received " + std::to_string(ta.ElementLength()));
  }
  keep.add(ta);
  overlaps.input(name, ta.Data(), ta.ByteLength());
  return ta.Data();
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
                                              " elements but received " + std::to_string(ta.ElementLength()));
  }
  keep.add(ta);
  overlaps.output(name, ta.Data(), ta.ByteLength());
  return ta.Data();
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
                                              " elements but received " + std::to_string(ta.ElementLength()));
  }
  float* data = ta.As<Napi::Float32Array>().Data();
  keep.add(ta);
  if (writable) overlaps.output(name, data, ta.ByteLength());
  else overlaps.input(name, data, ta.ByteLength());
  return data;
}

Bytes readBytes(Napi::Env env, const Napi::Object& args, const char* name, bool writable, Keep& keep,
                Overlaps& overlaps) {
  const Napi::TypedArray ta = requireTypedArray(env, args.Get(name), name, false);
  void* data = static_cast<unsigned char*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  keep.add(ta);
  if (writable) overlaps.output(name, data, ta.ByteLength());
  else overlaps.input(name, data, ta.ByteLength());
  return {data, ta.ByteLength()};
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

}  // namespace eigenlorax::addon
