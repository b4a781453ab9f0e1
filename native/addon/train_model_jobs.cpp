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
// The layers, their reading and the passes over them are train_model.h's.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/lowrank.h"
#include "../core/optim.h"
#include "job.h"
#include "train_losses.h"
#include "train_model.h"

namespace eigenlorax::addon {
namespace {

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
