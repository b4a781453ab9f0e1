// See train_model.h.
#include "train_model.h"

#include <algorithm>
#include <memory>
#include <new>

#include "../core/optim.h"

namespace eigenlorax::addon {
namespace {

std::string at(const std::string& name, const char* key) { return name + "." + key; }

bool readBool(Napi::Env env, const Napi::Object& o, const std::string& name) {
  const Napi::Value v = o.Get(name.substr(name.rfind('.') + 1));
  if (!v.IsBoolean()) badArgument(env, name, "true or false", v);
  return v.As<Napi::Boolean>().Value();
}

// A bias (or its gradient) passed as a 1 x d_out matrix, or null.
float* readRow(Napi::Env env, const Napi::Object& o, const std::string& name, Index length, bool writable, Keep& keep,
               Overlaps& overlaps) {
  const Napi::Value v = o.Get(name.substr(name.rfind('.') + 1));
  if (v.IsNull() || v.IsUndefined()) return nullptr;
  const MatView m = writable ? readOutMatrixValue(env, v, name, keep, overlaps)
                             : [&] {
                                 const ConstMatView c = readMatrixValue(env, v, name, keep, overlaps);
                                 return MatView{const_cast<float*>(c.data), c.rows, c.cols};
                               }();
  if (m.rows != 1 || m.cols != length) {
    throwError(env, code::kShapeMismatch,
               name + ": expected shape " + shapeString(1, length) + ", received " + shapeString(m.rows, m.cols));
  }
  return m.data;
}

double baseWork(Index rows, const ModelLayer& l) {
  return l.hasWeight ? static_cast<double>(rows) * l.dOut * l.dIn : 0.0;
}

}  // namespace

ModelLayer readModelLayer(Napi::Env env, const Napi::Value& value, const std::string& name, bool grads,
                          bool weightData, Keep& keep, Overlaps& overlaps) {
  if (!value.IsObject() || value.IsArray()) badArgument(env, name, "a layer object", value);
  const Napi::Object o = value.As<Napi::Object>();
  static const char* const kinds[] = {"linear", "lora", "eigenlora"};
  ModelLayer l;
  l.kind = static_cast<LayerKind>(readChoiceValue(env, o.Get("kind"), at(name, "kind"), kinds));
  l.relu = readBool(env, o, at(name, "relu"));
  const Napi::Value w = o.Get("weight");
  l.hasWeight = !(w.IsNull() || w.IsUndefined());
  if (l.kind == LayerKind::Linear && !l.hasWeight) badArgument(env, at(name, "weight"), "a matrix", w);
  if (l.hasWeight) {
    if (weightData) {
      l.weight = readMatrixValue(env, w, at(name, "weight"), keep, overlaps);
    } else {
      // Only the shape: the job does not read this weight (no copy).
      if (!w.IsObject()) badArgument(env, at(name, "weight"), "a matrix { rows, cols, data: Float32Array }", w);
      const Napi::Object m = w.As<Napi::Object>();
      const Napi::Value rows = m.Get("rows"), cols = m.Get("cols");
      if (!rows.IsNumber() || !cols.IsNumber()) badArgument(env, at(name, "weight"), "a matrix { rows, cols }", w);
      l.weight = {nullptr, static_cast<Index>(rows.As<Napi::Number>().Int64Value()),
                  static_cast<Index>(cols.As<Napi::Number>().Int64Value())};
    }
  }
  if (l.kind == LayerKind::Lora) {
    l.lora.a = readMatrixValue(env, o.Get("A"), at(name, "A"), keep, overlaps);
    l.lora.b = readMatrixValue(env, o.Get("B"), at(name, "B"), keep, overlaps);
    l.lora.scale = static_cast<float>(readScaleValue(env, o.Get("scale"), at(name, "scale")));
    l.dIn = l.lora.a.cols;
    l.dOut = l.lora.b.rows;
  } else if (l.kind == LayerKind::EigenLora) {
    l.eigen.componentsA = readMatrixValue(env, o.Get("componentsA"), at(name, "componentsA"), keep, overlaps);
    l.eigen.alpha = readMatrixValue(env, o.Get("alpha"), at(name, "alpha"), keep, overlaps);
    l.eigen.beta = readMatrixValue(env, o.Get("beta"), at(name, "beta"), keep, overlaps);
    l.eigen.componentsB = readMatrixValue(env, o.Get("componentsB"), at(name, "componentsB"), keep, overlaps);
    l.eigen.scale = static_cast<float>(readScaleValue(env, o.Get("scale"), at(name, "scale")));
    static const char* const orders[] = {"auto", "project", "rebuild"};
    l.order = static_cast<ProductOrder>(readChoiceValue(env, o.Get("order"), at(name, "order"), orders));
    l.dIn = l.eigen.componentsA.rows;
    l.dOut = l.eigen.componentsB.rows;
  } else {
    l.dIn = l.weight.cols;
    l.dOut = l.weight.rows;
  }
  l.bias = readRow(env, o, at(name, "bias"), l.dOut, false, keep, overlaps);
  if (grads) {
    const char* first = l.kind == LayerKind::Linear ? "dWeight" : l.kind == LayerKind::Lora ? "dA" : "dAlpha";
    const char* second = l.kind == LayerKind::Lora ? "dB" : "dBeta";
    const Napi::Value g0 = o.Get(first);
    if (l.kind == LayerKind::Linear) {
      if (!(g0.IsNull() || g0.IsUndefined())) {
        l.grad0 = readOutMatrixValue(env, g0, at(name, first), keep, overlaps);
        l.dBias = readRow(env, o, at(name, "dBias"), l.dOut, true, keep, overlaps);
      }
    } else {
      l.grad0 = readOutMatrixValue(env, g0, at(name, first), keep, overlaps);
      l.grad1 = readOutMatrixValue(env, o.Get(second), at(name, second), keep, overlaps);
    }
  }
  return l;
}

LoraLayer loraOf(const ModelLayer& l) {
  LoraLayer k = l.lora;
  k.weight = l.weight;
  k.bias = l.bias;
  return k;
}

EigenLoraLayer eigenOf(const ModelLayer& l) {
  EigenLoraLayer k = l.eigen;
  k.weight = l.weight;
  k.bias = l.bias;
  return k;
}

double forwardWork(Index rows, const ModelLayer& l) {
  switch (l.kind) {
    case LayerKind::Linear:
      return baseWork(rows, l);
    case LayerKind::Lora:
      return static_cast<double>(rows) * l.lora.a.rows * (l.dIn + l.dOut) + baseWork(rows, l);
    case LayerKind::EigenLora: {
      const EigenLoraLayer k = eigenOf(l);
      const ProductOrder o = l.order == ProductOrder::Auto ? chooseOrder(rows, k, false, false) : l.order;
      return eigenLoraCost(rows, k, o, false, false) + baseWork(rows, l);
    }
  }
  return 0.0;
}

double backwardWork(Index rows, const ModelLayer& l, bool inputGrad) {
  switch (l.kind) {
    case LayerKind::Linear: {
      const double product = static_cast<double>(rows) * l.dIn * l.dOut;
      return (inputGrad ? product : 0.0) + (l.trainable() ? product : 0.0) + static_cast<double>(rows) * l.dOut;
    }
    case LayerKind::Lora:
      return 2 * forwardWork(rows, l);
    case LayerKind::EigenLora: {
      const EigenLoraLayer k = eigenOf(l);
      const ProductOrder o = l.order == ProductOrder::Auto ? chooseOrder(rows, k, true, inputGrad) : l.order;
      return eigenLoraCost(rows, k, o, true, inputGrad) + (inputGrad ? baseWork(rows, l) : 0.0);
    }
  }
  return 0.0;
}

void ModelJob::checkChain(Napi::Env env) const {
  for (size_t i = 0; i < layers_.size(); i++) {
    const ModelLayer& l = layers_[i];
    const ConstMatView in = input(i);
    checkLayer(env, i, [&] {
      if (in.cols != l.dIn) {
        throw CoreError(code::kShapeMismatch, "takes " + std::to_string(l.dIn) + " features but its input (" +
                                                  (i == 0 ? std::string("x") : "outputs[" + std::to_string(i - 1) + "]") +
                                                  ") has " + std::to_string(in.cols));
      }
      if (l.hasWeight) requireShape("weight", l.weight.rows, l.weight.cols, l.dOut, l.dIn);
      requireShape(("outputs[" + std::to_string(i) + "]").c_str(), outputs_[i].rows, outputs_[i].cols, x_.rows,
                   l.dOut);
    });
  }
}

void ModelJob::runForward(std::vector<SavedProducts>* save) {
  if (save != nullptr) save->resize(layers_.size());
  for (size_t i = 0; i < layers_.size(); i++) {
    const ModelLayer& l = layers_[i];
    const MatView y = outputs_[i];
    SavedProducts* keep = save == nullptr ? nullptr : &(*save)[i];
    withThreadsFor(forwardWork(x_.rows, l), [&] {
      if (l.kind == LayerKind::Lora) loraForward(input(i), loraOf(l), y, keep);
      else if (l.kind == LayerKind::EigenLora) eigenLoraForward(input(i), eigenOf(l), y, l.order, keep);
      else linearForward(input(i), l.weight, l.bias, y);
    });
    if (l.relu) reluForward(y.data, y.data, static_cast<size_t>(y.rows * y.cols));
  }
}

void ModelJob::runBackward(const float* dy, size_t first, const std::vector<SavedProducts>* saved) {
  const Index n = x_.rows;
  Index width = 0;
  for (const ModelLayer& l : layers_) width = std::max(width, std::max(l.dIn, l.dOut));
  // Two buffers for the gradient flowing down (n x width), 64-byte aligned as the
  // per-layer jobs' copies are.
  const size_t bytes = static_cast<size_t>(n) * static_cast<size_t>(width) * sizeof(float);
  struct Free {
    void operator()(float* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };
  std::unique_ptr<float, Free> buffers[2] = {
      std::unique_ptr<float, Free>(static_cast<float*>(::operator new[](bytes, std::align_val_t{64}))),
      std::unique_ptr<float, Free>(static_cast<float*>(::operator new[](bytes, std::align_val_t{64})))};
  const float* g = dy;
  int free = 0;  // the buffer g does not use
  for (size_t i = layers_.size(); i-- > first;) {
    const ModelLayer& l = layers_[i];
    const size_t count = static_cast<size_t>(n * l.dOut);
    if (l.relu) {
      float* masked = buffers[free].get();
      reluBackward(outputs_[i].data, g, masked, count);
      g = masked;
      free = 1 - free;
    }
    const bool inputGrad = i > first;
    const MatView dx = inputGrad ? MatView{buffers[free].get(), n, l.dIn} : MatView{};
    const ConstMatView dy{g, n, l.dOut};
    withThreadsFor(backwardWork(n, l, inputGrad), [&] {
      const SavedProducts* kept = saved == nullptr ? nullptr : &(*saved)[i];
      if (l.kind == LayerKind::Lora) loraBackward(input(i), dy, loraOf(l), dx, l.grad0, l.grad1, kept);
      else if (l.kind == LayerKind::EigenLora) eigenLoraBackward(input(i), dy, eigenOf(l), dx, l.grad0, l.grad1, l.order, kept);
      else linearBackward(input(i), dy, l.weight, dx, l.grad0, l.dBias);
    });
    if (!inputGrad) break;
    g = dx.data;
    free = 1 - free;
  }
}

double ModelJob::totalForwardWork() const {
  double total = 0;
  for (const ModelLayer& l : layers_) total += forwardWork(x_.rows, l);
  return total;
}

double ModelJob::totalBackwardWork(size_t first) const {
  double total = 0;
  for (size_t i = first; i < layers_.size(); i++) total += backwardWork(x_.rows, layers_[i], i > first);
  return total;
}

size_t ModelJob::firstTrainable() const {
  for (size_t i = 0; i < layers_.size(); i++) {
    if (layers_[i].trainable()) return i;
  }
  return layers_.size();
}

void ModelJob::checkForward(Napi::Env env) const {
  for (size_t i = 0; i < layers_.size(); i++) {
    const ModelLayer& l = layers_[i];
    checkLayer(env, i, [&] {
      if (l.kind == LayerKind::Lora) checkLoraForward(input(i), loraOf(l), outputs_[i].view());
      else if (l.kind == LayerKind::EigenLora) checkEigenLoraForward(input(i), eigenOf(l), outputs_[i].view());
      else checkLinearForward(input(i), l.weight, outputs_[i].view());
    });
  }
}

void ModelJob::checkBackward(Napi::Env env, ConstMatView dyAll, size_t first) const {
  checkLayer(env, layers_.size() - 1, [&] { requireShape("dy", dyAll.rows, dyAll.cols, x_.rows, layers_.back().dOut); });
  for (size_t i = first; i < layers_.size(); i++) {
    const ModelLayer& l = layers_[i];
    const bool inputGrad = i > first;
    const ConstMatView dx = inputGrad ? ConstMatView{x_.data, x_.rows, l.dIn} : ConstMatView{};  // shape only
    const ConstMatView dy{dyAll.data, x_.rows, l.dOut};
    checkLayer(env, i, [&] {
      if (l.kind == LayerKind::Lora) checkLoraBackward(input(i), dy, loraOf(l), dx, l.grad0.view(), l.grad1.view());
      else if (l.kind == LayerKind::EigenLora) checkEigenLoraBackward(input(i), dy, eigenOf(l), dx, l.grad0.view(), l.grad1.view());
      else checkLinearBackward(input(i), dy, l.weight, dx, l.grad0.view());
    });
  }
}

}  // namespace eigenlorax::addon
