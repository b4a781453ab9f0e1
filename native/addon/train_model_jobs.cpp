// A sequential model's training passes behind the async boundary, one job per direction:
//
//   trainModelForward:  every layer (Linear, LoRA, EigenLoRA), each optionally followed by
//                       ReLU applied in place on its output (the epilogue), into `outputs`;
//   trainModelBackward: from dL/d(last output), every layer in reverse: the ReLU mask, the
//                       layer's gradients into the caller's gradient arrays, and the input
//                       gradient for the layer before, which stays in the job's own memory;
//   trainModelStep:     both, with a built-in loss (softmax cross-entropy or mean squared
//                       error, core/optim.h) between them: one job per training step, in
//                       which the backward reuses the forward's low-rank products.
//
// One hand-off per step or direction instead of one per layer and activation (each costs
// tens of microseconds, more on a loaded machine). The kernels are the per-layer ones
// (core/lowrank.h, core/optim.h), called in the same order with the same thread counts as
// the per-layer jobs (lowrank_jobs.cpp) would use, so the numbers are the same bit for bit.
// Memory: as every Job, the arguments are copied into the job's memory on the JS thread
// (Keep) and the outputs copied back when it ends (refused if one was detached meanwhile).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "../core/lowrank.h"
#include "../core/optim.h"
#include "job.h"
#include "train_losses.h"

namespace eigenlorax::addon {
namespace {

enum class Kind { Linear = 0, Lora = 1, EigenLora = 2 };

struct ModelLayer {
  Kind kind = Kind::Linear;
  bool relu = false;
  Index dIn = 0, dOut = 0;
  ConstMatView weight;  // empty when the job does not need it (backward, no input gradient)
  bool hasWeight = false;
  const float* bias = nullptr;
  LoraLayer lora;             // A, B, scale (weight and bias set when the kernels run)
  EigenLoraLayer eigen;       // components, loadings, scale
  ProductOrder order = ProductOrder::Auto;
  // Gradients (backward only): Linear dWeight/dBias (both empty when frozen), LoRA dA/dB,
  // EigenLoRA dAlpha/dBeta.
  MatView grad0, grad1;
  float* dBias = nullptr;
  bool trainable() const { return !grad0.empty(); }
};

std::string at(const std::string& name, const char* key) { return name + "." + key; }

bool readBool(Napi::Env env, const Napi::Object& o, const std::string& name) {
  const Napi::Value v = o.Get(name.substr(name.rfind('.') + 1));
  if (!v.IsBoolean()) badArgument(env, name, "true or false", v);
  return v.As<Napi::Boolean>().Value();
}

template <size_t N>
int readChoiceValue(Napi::Env env, const Napi::Value& v, const std::string& name, const char* const (&names)[N]) {
  std::string expected;
  for (const char* n : names) expected += (expected.empty() ? "one of '" : ", '") + std::string(n) + "'";
  if (v.IsString()) {
    const std::string s = v.As<Napi::String>().Utf8Value();
    for (size_t i = 0; i < N; i++) {
      if (s == names[i]) return static_cast<int>(i);
    }
  }
  badArgument(env, name, expected, v);
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

// One layer's description: { kind, relu, weight, bias, and A, B, scale (lora) or
// componentsA, alpha, beta, componentsB, scale, order (eigenlora) }, plus with `grads` the
// gradient arrays (linear: dWeight and dBias, null when frozen; lora: dA, dB; eigenlora:
// dAlpha, dBeta). `weightData`: copy the base weight (else only its shape is read).
ModelLayer readLayer(Napi::Env env, const Napi::Value& value, const std::string& name, bool grads,
                     bool weightData, Keep& keep, Overlaps& overlaps) {
  if (!value.IsObject() || value.IsArray()) badArgument(env, name, "a layer object", value);
  const Napi::Object o = value.As<Napi::Object>();
  static const char* const kinds[] = {"linear", "lora", "eigenlora"};
  ModelLayer l;
  l.kind = static_cast<Kind>(readChoiceValue(env, o.Get("kind"), at(name, "kind"), kinds));
  l.relu = readBool(env, o, at(name, "relu"));
  const Napi::Value w = o.Get("weight");
  l.hasWeight = !(w.IsNull() || w.IsUndefined());
  if (l.kind == Kind::Linear && !l.hasWeight) badArgument(env, at(name, "weight"), "a matrix", w);
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
  if (l.kind == Kind::Lora) {
    l.lora.a = readMatrixValue(env, o.Get("A"), at(name, "A"), keep, overlaps);
    l.lora.b = readMatrixValue(env, o.Get("B"), at(name, "B"), keep, overlaps);
    l.lora.scale = static_cast<float>(readScaleValue(env, o.Get("scale"), at(name, "scale")));
    l.dIn = l.lora.a.cols;
    l.dOut = l.lora.b.rows;
  } else if (l.kind == Kind::EigenLora) {
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
    const char* first = l.kind == Kind::Linear ? "dWeight" : l.kind == Kind::Lora ? "dA" : "dAlpha";
    const char* second = l.kind == Kind::Lora ? "dB" : "dBeta";
    const Napi::Value g0 = o.Get(first);
    if (l.kind == Kind::Linear) {
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

// The layer's operands with its base, as the kernels take them.
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

double baseWork(Index rows, const ModelLayer& l) {
  return l.hasWeight ? static_cast<double>(rows) * l.dOut * l.dIn : 0.0;
}

// Multiply-adds of a layer's forward and backward, as the per-layer jobs count them
// (lowrank_jobs.cpp): a job under Job::kInlineWork runs single-threaded, so these decide
// each kernel's thread count here too.
double forwardWork(Index rows, const ModelLayer& l) {
  switch (l.kind) {
    case Kind::Linear:
      return baseWork(rows, l);
    case Kind::Lora:
      return static_cast<double>(rows) * l.lora.a.rows * (l.dIn + l.dOut) + baseWork(rows, l);
    case Kind::EigenLora: {
      const EigenLoraLayer k = eigenOf(l);
      const ProductOrder o = l.order == ProductOrder::Auto ? chooseOrder(rows, k, false, false) : l.order;
      return eigenLoraCost(rows, k, o, false, false) + baseWork(rows, l);
    }
  }
  return 0.0;
}

double backwardWork(Index rows, const ModelLayer& l, bool inputGrad) {
  switch (l.kind) {
    case Kind::Linear: {
      const double product = static_cast<double>(rows) * l.dIn * l.dOut;
      return (inputGrad ? product : 0.0) + (l.trainable() ? product : 0.0) + static_cast<double>(rows) * l.dOut;
    }
    case Kind::Lora:
      return 2 * forwardWork(rows, l);
    case Kind::EigenLora: {
      const EigenLoraLayer k = eigenOf(l);
      const ProductOrder o = l.order == ProductOrder::Auto ? chooseOrder(rows, k, true, inputGrad) : l.order;
      return eigenLoraCost(rows, k, o, true, inputGrad) + (inputGrad ? baseWork(rows, l) : 0.0);
    }
  }
  return 0.0;
}

// Core shape errors named by layer: "layers[1]: A: expected shape ...".
template <typename Fn>
void checkLayer(Napi::Env env, size_t i, Fn fn) {
  try {
    fn();
  } catch (const CoreError& e) {
    throwError(env, e.code(), "layers[" + std::to_string(i) + "]: " + e.what());
  }
}

class ModelJob : public Job {
 public:
  using Job::Job;

 protected:
  // Reads x, layers and outputs (the forward's activations: written by the forward job,
  // read by the backward one). `weightData(i)`: whether layer i's base weight is read.
  template <typename WeightData>
  Napi::Object readModel(const Napi::CallbackInfo& info, bool grads, bool outputsWritable, WeightData weightData,
                         Overlaps& overlaps) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    x_ = readMatrix(env, args, "x", keep, overlaps);
    const Napi::Array list = readArray(env, args, "layers");
    const Napi::Array outs = readArray(env, args, "outputs");
    if (list.Length() == 0) badArgument(env, "layers", "at least one layer", list);
    if (outs.Length() != list.Length()) {
      throwError(env, code::kShapeMismatch,
                 "outputs: expected one matrix per layer (" + std::to_string(list.Length()) + "), received " +
                     std::to_string(outs.Length()));
    }
    for (uint32_t i = 0; i < list.Length(); i++) {
      const std::string name = "layers[" + std::to_string(i) + "]";
      layers_.push_back(readLayer(env, list.Get(i), name, grads, weightData(i), keep, overlaps));
    }
    for (uint32_t i = 0; i < outs.Length(); i++) {
      const std::string name = "outputs[" + std::to_string(i) + "]";
      if (outputsWritable) {
        outputs_.push_back(readOutMatrixValue(env, outs.Get(i), name, keep, overlaps));
      } else {
        const ConstMatView c = readMatrixValue(env, outs.Get(i), name, keep, overlaps);
        outputs_.push_back({const_cast<float*>(c.data), c.rows, c.cols});
      }
    }
    return args;
  }

  // Every layer's input shape against the one before, and its output's shape.
  void checkChain(Napi::Env env) const {
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

  ConstMatView input(size_t i) const { return i == 0 ? x_ : outputs_[i - 1].view(); }

  // Every layer (and its ReLU) into outputs_; with `save`, each layer's products that its
  // backward needs again into save[i] (see SavedProducts).
  void runForward(std::vector<SavedProducts>* save = nullptr) {
    if (save != nullptr) save->resize(layers_.size());
    for (size_t i = 0; i < layers_.size(); i++) {
      const ModelLayer& l = layers_[i];
      const MatView y = outputs_[i];
      SavedProducts* keep = save == nullptr ? nullptr : &(*save)[i];
      withThreadsFor(forwardWork(x_.rows, l), [&] {
        if (l.kind == Kind::Lora) loraForward(input(i), loraOf(l), y, keep);
        else if (l.kind == Kind::EigenLora) eigenLoraForward(input(i), eigenOf(l), y, l.order, keep);
        else linearForward(input(i), l.weight, l.bias, y);
      });
      if (l.relu) reluForward(y.data, y.data, static_cast<size_t>(y.rows * y.cols));
    }
  }

  // Every layer's gradients from dL/d(last output) `dy`, down to layer `first` (which
  // gets no input gradient); `saved`: what runForward saved.
  void runBackward(const float* dy, size_t first, const std::vector<SavedProducts>* saved = nullptr) {
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
        if (l.kind == Kind::Lora) loraBackward(input(i), dy, loraOf(l), dx, l.grad0, l.grad1, kept);
        else if (l.kind == Kind::EigenLora) eigenLoraBackward(input(i), dy, eigenOf(l), dx, l.grad0, l.grad1, l.order, kept);
        else linearBackward(input(i), dy, l.weight, dx, l.grad0, l.dBias);
      });
      if (!inputGrad) break;
      g = dx.data;
      free = 1 - free;
    }
  }

  double totalForwardWork() const {
    double total = 0;
    for (const ModelLayer& l : layers_) total += forwardWork(x_.rows, l);
    return total;
  }

  double totalBackwardWork(size_t first) const {
    double total = 0;
    for (size_t i = first; i < layers_.size(); i++) total += backwardWork(x_.rows, layers_[i], i > first);
    return total;
  }

  // The first layer with gradients, or layers_.size().
  size_t firstTrainable() const {
    for (size_t i = 0; i < layers_.size(); i++) {
      if (layers_[i].trainable()) return i;
    }
    return layers_.size();
  }

  // The forward kernels' shape checks, named by layer.
  void checkForward(Napi::Env env) const {
    for (size_t i = 0; i < layers_.size(); i++) {
      const ModelLayer& l = layers_[i];
      checkLayer(env, i, [&] {
        if (l.kind == Kind::Lora) checkLoraForward(input(i), loraOf(l), outputs_[i].view());
        else if (l.kind == Kind::EigenLora) checkEigenLoraForward(input(i), eigenOf(l), outputs_[i].view());
        else checkLinearForward(input(i), l.weight, outputs_[i].view());
      });
    }
  }

  // The backward kernels' shape checks from layer `first` on, named by layer.
  void checkBackward(Napi::Env env, ConstMatView dyAll, size_t first) const {
    checkLayer(env, layers_.size() - 1, [&] { requireShape("dy", dyAll.rows, dyAll.cols, x_.rows, layers_.back().dOut); });
    for (size_t i = first; i < layers_.size(); i++) {
      const ModelLayer& l = layers_[i];
      const bool inputGrad = i > first;
      const ConstMatView dx = inputGrad ? ConstMatView{x_.data, x_.rows, l.dIn} : ConstMatView{};  // shape only
      const ConstMatView dy{dyAll.data, x_.rows, l.dOut};
      checkLayer(env, i, [&] {
        if (l.kind == Kind::Lora) checkLoraBackward(input(i), dy, loraOf(l), dx, l.grad0.view(), l.grad1.view());
        else if (l.kind == Kind::EigenLora) checkEigenLoraBackward(input(i), dy, eigenOf(l), dx, l.grad0.view(), l.grad1.view());
        else checkLinearBackward(input(i), dy, l.weight, dx, l.grad0.view());
      });
    }
  }


  // Runs `fn` with the thread count the per-layer job of `work` multiply-adds would get.
  template <typename Fn>
  void withThreadsFor(double work, Fn fn) {
    useThreads(work < kInlineWork ? 1 : threads_);
    fn();
    useThreads(threads_);
  }

  void noteThreads() { threads_ = currentThreads(); }

  ConstMatView x_;
  std::vector<ModelLayer> layers_;
  std::vector<MatView> outputs_;

 private:
  int threads_ = 1;
};

class ModelForwardJob : public ModelJob {
 public:
  using ModelJob::ModelJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Overlaps overlaps;
    readModel(info, false, true, [](uint32_t) { return true; }, overlaps);
    overlaps.check(env);
    checkChain(env);
    checkForward(env);
  }

 protected:
  void run() override {
    noteThreads();
    runForward();
  }
  double work() const override { return totalForwardWork(); }
};

class ModelBackwardJob : public ModelJob {
 public:
  using ModelJob::ModelJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Overlaps overlaps;
    // Which layers need their input gradient (and so their base weight) is known from the
    // gradients, read first: every layer after the first trainable one.
    const Napi::Object args = requireObject(env, info[0], "arguments");
    const Napi::Array list = readArray(env, args, "layers");
    first_ = list.Length();
    for (uint32_t i = 0; i < list.Length() && first_ == list.Length(); i++) {
      const Napi::Value item = list.Get(i);
      if (!item.IsObject()) break;  // reported by readModel
      const Napi::Object o = item.As<Napi::Object>();
      const Napi::Value kind = o.Get("kind");
      const Napi::Value dWeight = o.Get("dWeight");
      const bool linear = kind.IsString() && kind.As<Napi::String>().Utf8Value() == "linear";
      if (!linear || !(dWeight.IsNull() || dWeight.IsUndefined())) first_ = i;
    }
    const size_t planned = first_;
    readModel(info, true, false, [this](uint32_t i) { return i > first_; }, overlaps);
    first_ = firstTrainable();
    if (first_ == layers_.size()) badArgument(env, "layers", "at least one layer with gradients", list);
    // A getter that changed the layers between the two reads: refuse rather than run
    // without a weight the input gradient needs.
    if (first_ != planned) throwError(env, code::kInvalidArgument, "layers: changed while they were read");
    dy_ = readMatrix(env, args, "dy", keep, overlaps);
    overlaps.check(env);
    checkChain(env);
    checkBackward(env, dy_, first_);
  }

 protected:
  void run() override {
    noteThreads();
    runBackward(dy_.data, first_);
  }
  double work() const override { return totalBackwardWork(first_); }

 private:
  ConstMatView dy_;
  size_t first_ = 0;
};

// forward, loss, backward: { x, layers (with their gradients), outputs, loss, targets
// (labels for 'cross-entropy', an n x out matrix for 'mse'), grad (n x out, receives
// dL/d(last output)) }. Resolves to { loss, correct } (correct: null for 'mse'). A loss
// that is not finite stops the job before the backward pass: no gradient is written.
class ModelStepJob : public ModelJob {
 public:
  using ModelJob::ModelJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Overlaps overlaps;
    const Napi::Object args = readModel(info, true, true, [](uint32_t) { return true; }, overlaps);
    first_ = firstTrainable();
    if (first_ == layers_.size()) badArgument(env, "layers", "at least one layer with gradients", args.Get("layers"));
    static const char* const losses[] = {"cross-entropy", "mse"};
    classification_ = readChoiceValue(env, args.Get("loss"), "loss", losses) == 0;
    const Napi::Value targets = args.Get("targets");
    const Napi::Value labels = classification_ ? readLabelsValue(env, targets, "targets") : env.Null();
    if (!classification_) targets_ = readMatrixValue(env, targets, "targets", keep, overlaps);
    grad_ = readOutMatrix(env, args, "grad", keep, overlaps);
    overlaps.check(env);
    checkChain(env);
    checkForward(env);
    checkBackward(env, grad_.view(), first_);
    const Index outs = layers_.back().dOut;
    if (!classification_) {
      checkLayer(env, layers_.size() - 1, [&] { requireShape("targets", targets_.rows, targets_.cols, x_.rows, outs); });
    } else {
      // Copied: the job runs after this call returns, when the array may be gone.
      const LabelsView view = labelsOf(env, labels, "targets", static_cast<size_t>(x_.rows), static_cast<size_t>(outs));
      labels_.resize(view.length);
      for (size_t i = 0; i < view.length; i++) labels_[i] = static_cast<int32_t>(view.at(i));
    }
  }

 protected:
  void run() override {
    noteThreads();
    std::vector<SavedProducts> saved;
    runForward(&saved);
    const MatView& y = outputs_.back();
    const size_t count = static_cast<size_t>(y.rows * y.cols);
    if (classification_) {
      value_ = softmaxCrossEntropy(y.data, static_cast<size_t>(y.rows), static_cast<size_t>(y.cols), labels_.data(), grad_.data);
    } else {
      value_.loss = meanSquaredError(y.data, targets_.data, count, grad_.data);
    }
    if (std::isfinite(value_.loss)) runBackward(grad_.data, first_, &saved);
  }
  double work() const override { return totalForwardWork() + totalBackwardWork(first_); }
  Napi::Value result(Napi::Env env) override {
    Napi::Object out = Napi::Object::New(env);
    out.Set("loss", Napi::Number::New(env, value_.loss));
    out.Set("correct", classification_ ? Napi::Value(Napi::Number::New(env, static_cast<double>(value_.correct))) : env.Null());
    return out;
  }

 private:
  bool classification_ = true;
  std::vector<int32_t> labels_;
  ConstMatView targets_;
  MatView grad_;
  size_t first_ = 0;
  LossValue value_;
};

}  // namespace

void registerTrainModel(Napi::Env env, Napi::Object exports) {
  exportJob<ModelForwardJob>(env, exports, "trainModelForward");
  exportJob<ModelBackwardJob>(env, exports, "trainModelBackward");
  exportJob<ModelStepJob>(env, exports, "trainModelStep");
}

}  // namespace eigenlorax::addon
