// The per-element steps of training (optimiser updates, ReLU, losses, finiteness), called
// synchronously on the JS thread and working on the caller's arrays in place.
//
// Why not a Job: these are a few passes over memory (an AdamW step over 270k parameters
// takes ~0.3 ms), cheaper than the hand-off to the thread pool and the copies a Job makes
// of its arrays; the JavaScript loops they replace ran on the JS thread too. Why in place
// is safe: no JavaScript runs between the moment the data pointers are taken and the
// return, so nothing can detach, shrink or free the memory. Every argument is read first
// (reading an array element may run a getter, which may detach an array read before it);
// only then are pointers and lengths taken, and checked.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../core/errors.h"
#include "../core/finite.h"
#include "../core/optim.h"
#include "args.h"
#include "env.h"
#include "train_losses.h"

namespace eigenlorax::addon {
namespace {

// A Float32Array argument (or null when `nullable`), read in pass 1.
Napi::Value readFloat32Value(Napi::Env env, const Napi::Value& value, const std::string& name, bool nullable) {
  if (nullable && (value.IsNull() || value.IsUndefined())) return env.Null();
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    badArgument(env, name, "a Float32Array", value);
  }
  return value;
}

std::vector<Napi::Value> readFloat32List(Napi::Env env, const Napi::Value& value, const char* name, size_t group,
                                         size_t nullableSlot) {
  if (!value.IsArray()) badArgument(env, name, "an array of Float32Array", value);
  const Napi::Array list = value.As<Napi::Array>();
  const uint32_t n = list.Length();
  if (n % group != 0) {
    throwError(env, code::kInvalidArgument,
               std::string(name) + ": expected groups of " + std::to_string(group) + " arrays, received " +
                   std::to_string(n));
  }
  std::vector<Napi::Value> out;
  out.reserve(n);
  for (uint32_t i = 0; i < n; i++) {
    out.push_back(readFloat32Value(env, list.Get(i), std::string(name) + "[" + std::to_string(i) + "]",
                                   i % group == nullableSlot));
  }
  return out;
}

// Pass 2: the data pointer and length (no JavaScript runs here).
float* dataOf(Napi::Env env, const Napi::Value& value, size_t& length) {
  if (value.IsNull()) {
    length = 0;
    return nullptr;
  }
  const Napi::TypedArray array = value.As<Napi::TypedArray>();
  length = array.ElementLength();
  return static_cast<float*>(typedArrayData(env, array));
}

// Groups of [param, grad, state0, state1?] into tensors, every array as long as its param.
std::vector<OptimTensor> tensorsOf(Napi::Env env, const std::vector<Napi::Value>& values, size_t group,
                                   const char* name) {
  static const char* const roles[] = {"param", "grad", "state", "state"};
  std::vector<OptimTensor> tensors;
  tensors.reserve(values.size() / group);
  for (size_t i = 0; i < values.size(); i += group) {
    OptimTensor t;
    float* slots[4] = {nullptr, nullptr, nullptr, nullptr};
    for (size_t j = 0; j < group; j++) {
      size_t length = 0;
      slots[j] = dataOf(env, values[i + j], length);
      if (j == 0) t.length = length;
      if (!values[i + j].IsNull() && length != t.length) {  // a detached array has no elements
        throwError(env, code::kShapeMismatch,
                   std::string(name) + "[" + std::to_string(i + j) + "]: the " + roles[j] + " of tensor " +
                       std::to_string(i / group) + " has " + std::to_string(length) + " values but its parameter has " +
                       std::to_string(t.length));
      }
    }
    t.param = slots[0];
    t.grad = slots[1];
    t.state0 = slots[2];
    t.state1 = slots[3];
    tensors.push_back(t);
  }
  return tensors;
}

double numberArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const Napi::Value v = info[i];
  if (!v.IsNumber() || !std::isfinite(v.As<Napi::Number>().DoubleValue())) badArgument(info.Env(), name, "a finite number", v);
  return v.As<Napi::Number>().DoubleValue();
}

bool boolArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const Napi::Value v = info[i];
  if (!v.IsBoolean()) badArgument(info.Env(), name, "true or false", v);
  return v.As<Napi::Boolean>().Value();
}

// trainAdamStep([p, g, exp_avg, exp_avg_sq, ...], stepSize, invBc2Sqrt, keep, l2, beta1, beta2, eps)
Napi::Value trainAdamStep(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::vector<Napi::Value> values = readFloat32List(env, info[0], "tensors", 4, 4);
  AdamScalars s{numberArg(info, 1, "stepSize"), numberArg(info, 2, "invBc2Sqrt"), numberArg(info, 3, "keep"),
                numberArg(info, 4, "l2"),       numberArg(info, 5, "beta1"),      numberArg(info, 6, "beta2"),
                numberArg(info, 7, "eps")};
  adamStep(tensorsOf(env, values, 4, "tensors"), s);
  return env.Undefined();
}

// trainSgdStep([p, g, momentum_buffer | null, ...], lr, momentum, 1 - dampening, weightDecay, nesterov, first)
Napi::Value trainSgdStep(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::vector<Napi::Value> values = readFloat32List(env, info[0], "tensors", 3, 2);
  SgdScalars s{numberArg(info, 1, "lr"),          numberArg(info, 2, "momentum"), numberArg(info, 3, "oneMinusDamp"),
               numberArg(info, 4, "weightDecay"), boolArg(info, 5, "nesterov"),   boolArg(info, 6, "first")};
  sgdStep(tensorsOf(env, values, 3, "tensors"), s);
  return env.Undefined();
}

// Reads `count` Float32Array arguments, then their pointers; all of the first one's length.
std::vector<float*> sameLengthArrays(const Napi::CallbackInfo& info, const char* const* names, size_t count,
                                     size_t& length) {
  Napi::Env env = info.Env();
  std::vector<Napi::Value> values;
  for (size_t i = 0; i < count; i++) values.push_back(readFloat32Value(env, info[i], names[i], false));
  std::vector<float*> out;
  for (size_t i = 0; i < count; i++) {
    size_t n = 0;
    out.push_back(dataOf(env, values[i], n));
    if (i == 0) length = n;
    if (n != length) {
      throwError(env, code::kShapeMismatch,
                 std::string(names[i]) + " has " + std::to_string(n) + " values but " + names[0] + " has " +
                     std::to_string(length));
    }
  }
  return out;
}

// trainReluForward(x, y)
Napi::Value trainReluForward(const Napi::CallbackInfo& info) {
  static const char* const names[] = {"x", "y"};
  size_t n = 0;
  const std::vector<float*> a = sameLengthArrays(info, names, 2, n);
  reluForward(a[0], a[1], n);
  return info.Env().Undefined();
}

// trainReluBackward(y, dy, dx)
Napi::Value trainReluBackward(const Napi::CallbackInfo& info) {
  static const char* const names[] = {"y", "dy", "dx"};
  size_t n = 0;
  const std::vector<float*> a = sameLengthArrays(info, names, 3, n);
  reluBackward(a[0], a[1], a[2], n);
  return info.Env().Undefined();
}

// trainAllFinite([a, b, ...]): whether every element of every array is finite.
Napi::Value trainAllFinite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::vector<Napi::Value> values = readFloat32List(env, info[0], "arrays", 1, 1);
  bool ok = true;
  for (const Napi::Value& v : values) {
    size_t n = 0;
    const float* data = dataOf(env, v, n);
    ok = ok && allFinite(data, n);
  }
  return Napi::Boolean::New(env, ok);
}

}  // namespace

Napi::Value readLabelsValue(Napi::Env env, const Napi::Value& value, const std::string& name) {
  if (value.IsTypedArray()) {
    const napi_typedarray_type t = value.As<Napi::TypedArray>().TypedArrayType();
    if (t == napi_uint8_array || t == napi_uint16_array || t == napi_int32_array) return value;
  }
  badArgument(env, name, "class labels (Uint8Array, Uint16Array or Int32Array)", value);
}

LabelsView labelsOf(Napi::Env env, const Napi::Value& value, const std::string& name, size_t rows, size_t classes) {
  const Napi::TypedArray array = value.As<Napi::TypedArray>();
  LabelsView v;
  v.type = array.TypedArrayType();
  v.data = typedArrayData(env, array);
  v.length = array.ElementLength();
  if (v.length != rows) {
    throwError(env, code::kShapeMismatch, name + ": " + std::to_string(v.length) + " labels for " + std::to_string(rows) + " rows");
  }
  for (size_t i = 0; i < v.length; i++) {
    const int64_t label = v.at(i);
    if (label < 0 || static_cast<size_t>(label) >= classes) {
      throwError(env, code::kInvalidArgument,
                 name + ": label " + std::to_string(label) + " at row " + std::to_string(i) + " is out of range: the model has " +
                     std::to_string(classes) + " outputs, so labels must be in [0, " + std::to_string(classes - 1) + "]");
    }
  }
  return v;
}

LossValue softmaxCrossEntropyOf(const LabelsView& labels, const float* logits, size_t n, size_t c, float* grad) {
  switch (labels.type) {
    case napi_uint8_array:
      return softmaxCrossEntropy(logits, n, c, static_cast<const uint8_t*>(labels.data), grad);
    case napi_uint16_array:
      return softmaxCrossEntropy(logits, n, c, static_cast<const uint16_t*>(labels.data), grad);
    default:
      return softmaxCrossEntropy(logits, n, c, static_cast<const int32_t*>(labels.data), grad);
  }
}

namespace {

// trainSoftmaxCrossEntropy(logits, rows, classes, labels, grad | null): { loss, correct }
Napi::Value trainSoftmaxCrossEntropy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Napi::Value logitsValue = readFloat32Value(env, info[0], "logits", false);
  const double rows = numberArg(info, 1, "rows"), classes = numberArg(info, 2, "classes");
  const Napi::Value labelsValue = readLabelsValue(env, info[3], "labels");
  const Napi::Value gradValue = readFloat32Value(env, info[4], "grad", true);
  if (rows < 0 || classes < 1 || rows != std::floor(rows) || classes != std::floor(classes)) {
    throwError(env, code::kInvalidArgument, "rows and classes: expected integers, rows >= 0 and classes >= 1");
  }
  const size_t n = static_cast<size_t>(rows), c = static_cast<size_t>(classes);
  size_t logitsLength = 0, gradLength = 0;
  const float* logits = dataOf(env, logitsValue, logitsLength);
  float* grad = dataOf(env, gradValue, gradLength);
  if (logitsLength != n * c) {
    throwError(env, code::kShapeMismatch, "logits: " + std::to_string(logitsLength) + " values for " + shapeString(n, c));
  }
  if (grad != nullptr && gradLength != n * c) {
    throwError(env, code::kShapeMismatch, "grad: " + std::to_string(gradLength) + " values for " + shapeString(n, c));
  }
  const LabelsView labels = labelsOf(env, labelsValue, "labels", n, c);
  const LossValue v = softmaxCrossEntropyOf(labels, logits, n, c, grad);
  Napi::Object out = Napi::Object::New(env);
  out.Set("loss", Napi::Number::New(env, v.loss));
  out.Set("correct", Napi::Number::New(env, static_cast<double>(v.correct)));
  return out;
}

// trainGatherRows(src, cols, order, start, end, dst): dst's row k is src's row order[start + k]
// (src: a row-major matrix of `cols` columns; order: a Uint32Array). A batch's inputs, one
// memcpy a row.
Napi::Value trainGatherRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Napi::Value srcValue = readFloat32Value(env, info[0], "src", false);
  const double colsArg = numberArg(info, 1, "cols");
  const Napi::Value orderValue = info[2];
  if (!orderValue.IsTypedArray() || orderValue.As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
    badArgument(env, "order", "a Uint32Array", orderValue);
  }
  const double startArg = numberArg(info, 3, "start"), endArg = numberArg(info, 4, "end");
  const Napi::Value dstValue = readFloat32Value(env, info[5], "dst", false);
  const Napi::TypedArray orderArray = orderValue.As<Napi::TypedArray>();
  const size_t orderLength = orderArray.ElementLength();
  if (colsArg < 1 || colsArg != std::floor(colsArg) || startArg < 0 || startArg != std::floor(startArg) || endArg < startArg ||
      endArg != std::floor(endArg) || endArg > static_cast<double>(orderLength)) {
    throwError(env, code::kInvalidArgument,
               "cols, start, end: expected integers with cols >= 1 and 0 <= start <= end <= order.length (" +
                   std::to_string(orderLength) + ")");
  }
  const size_t cols = static_cast<size_t>(colsArg), start = static_cast<size_t>(startArg), end = static_cast<size_t>(endArg);
  size_t srcLength = 0, dstLength = 0;
  const float* src = dataOf(env, srcValue, srcLength);
  float* dst = dataOf(env, dstValue, dstLength);
  const uint32_t* order = static_cast<const uint32_t*>(typedArrayData(env, orderArray));
  if (srcLength % cols != 0) {
    throwError(env, code::kShapeMismatch, "src: " + std::to_string(srcLength) + " values are not rows of " + std::to_string(cols));
  }
  if (dstLength != (end - start) * cols) {
    throwError(env, code::kShapeMismatch, "dst: " + std::to_string(dstLength) + " values for " + shapeString(end - start, cols));
  }
  const size_t rows = srcLength / cols;
  for (size_t k = start; k < end; k++) {
    if (order[k] >= rows) {
      throwError(env, code::kInvalidArgument,
                 "order[" + std::to_string(k) + "]: row " + std::to_string(order[k]) + " of a matrix of " + std::to_string(rows) + " rows");
    }
  }
  for (size_t k = start; k < end; k++) std::memcpy(dst + (k - start) * cols, src + static_cast<size_t>(order[k]) * cols, cols * sizeof(float));
  return env.Undefined();
}

// trainMeanSquaredError(output, target, grad | null): the mean loss
Napi::Value trainMeanSquaredError(const Napi::CallbackInfo& info) {
  static const char* const names[] = {"output", "target"};
  Napi::Env env = info.Env();
  const Napi::Value gradValue = readFloat32Value(env, info[2], "grad", true);
  size_t n = 0, gradLength = 0;
  const std::vector<float*> a = sameLengthArrays(info, names, 2, n);
  float* grad = dataOf(env, gradValue, gradLength);
  if (grad != nullptr && gradLength != n) {
    throwError(env, code::kShapeMismatch, "grad has " + std::to_string(gradLength) + " values but output has " + std::to_string(n));
  }
  return Napi::Number::New(env, meanSquaredError(a[0], a[1], n, grad));
}

}  // namespace

// train_model_jobs.cpp: whole-model forward and backward jobs.
void registerTrainModel(Napi::Env env, Napi::Object exports);

void registerTrain(Napi::Env env, Napi::Object exports) {
  registerTrainModel(env, exports);
  exports.Set("trainAdamStep", Napi::Function::New(env, trainAdamStep, "trainAdamStep"));
  exports.Set("trainSgdStep", Napi::Function::New(env, trainSgdStep, "trainSgdStep"));
  exports.Set("trainReluForward", Napi::Function::New(env, trainReluForward, "trainReluForward"));
  exports.Set("trainReluBackward", Napi::Function::New(env, trainReluBackward, "trainReluBackward"));
  exports.Set("trainSoftmaxCrossEntropy", Napi::Function::New(env, trainSoftmaxCrossEntropy, "trainSoftmaxCrossEntropy"));
  exports.Set("trainGatherRows", Napi::Function::New(env, trainGatherRows, "trainGatherRows"));
  exports.Set("trainMeanSquaredError", Napi::Function::New(env, trainMeanSquaredError, "trainMeanSquaredError"));
  exports.Set("trainAllFinite", Napi::Function::New(env, trainAllFinite, "trainAllFinite"));
}

}  // namespace eigenlorax::addon
