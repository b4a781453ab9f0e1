// A sequential model as the training jobs (train_model_jobs.cpp) read and run it: its
// layers, read from their JavaScript descriptions (train_model.cpp); each layer's
// multiply-add count, which sets its kernels' thread count as the per-layer jobs' would; and
// ModelJob, the jobs' base, with the forward and backward passes over the layers and their
// shape checks.
#pragma once
#include <napi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../core/lowrank.h"
#include "job.h"

namespace eigenlorax::addon {

enum class LayerKind { Linear = 0, Lora = 1, EigenLora = 2 };

struct ModelLayer {
  LayerKind kind = LayerKind::Linear;
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

// The index of `v` (a string) among `names`, else a typed error naming `name` and the choices.
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

// One layer's description: { kind, relu, weight, bias, and A, B, scale (lora) or
// componentsA, alpha, beta, componentsB, scale, order (eigenlora) }, plus with `grads` the
// gradient arrays (linear: dWeight and dBias, null when frozen; lora: dA, dB; eigenlora:
// dAlpha, dBeta). `weightData`: copy the base weight (else only its shape is read).
ModelLayer readModelLayer(Napi::Env env, const Napi::Value& value, const std::string& name, bool grads,
                          bool weightData, Keep& keep, Overlaps& overlaps);

// The layer's operands with its base, as the kernels take them.
LoraLayer loraOf(const ModelLayer& l);
EigenLoraLayer eigenOf(const ModelLayer& l);

// Multiply-adds of a layer's forward and backward, as the per-layer jobs count them
// (lowrank_jobs.cpp): a job under Job::kInlineWork runs single-threaded, so these decide
// each kernel's thread count here too.
double forwardWork(Index rows, const ModelLayer& l);
double backwardWork(Index rows, const ModelLayer& l, bool inputGrad);

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
      layers_.push_back(readModelLayer(env, list.Get(i), name, grads, weightData(i), keep, overlaps));
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

  // Layer i's input: x, or the output of the layer before.
  ConstMatView input(size_t i) const { return i == 0 ? x_ : outputs_[i - 1].view(); }

  // Every layer's input shape against the one before, and its output's shape.
  void checkChain(Napi::Env env) const;

  // Every layer (and its ReLU) into outputs_; with `save`, each layer's products that its
  // backward needs again into save[i] (see SavedProducts).
  void runForward(std::vector<SavedProducts>* save = nullptr);

  // Every layer's gradients from dL/d(last output) `dy`, down to layer `first` (which
  // gets no input gradient); `saved`: what runForward saved.
  void runBackward(const float* dy, size_t first, const std::vector<SavedProducts>* saved = nullptr);

  // Multiply-adds of the forward pass, and of the backward pass down to layer `first`.
  double totalForwardWork() const;
  double totalBackwardWork(size_t first) const;

  // The first layer with gradients, or layers_.size().
  size_t firstTrainable() const;

  // The forward kernels' shape checks, named by layer.
  void checkForward(Napi::Env env) const;

  // The backward kernels' shape checks from layer `first` on, named by layer.
  void checkBackward(Napi::Env env, ConstMatView dyAll, size_t first) const;

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

}  // namespace eigenlorax::addon
