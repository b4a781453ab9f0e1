// LoRA and EigenLoRA forward/backward (either backend), plain linear layers and in-place
// merges (CPU) behind the async boundary.
#include "../core/lowrank.h"
#include "device.h"

namespace eigenlorax::addon {
namespace {

const char* orderName(ProductOrder order) {
  return order == ProductOrder::Rebuild ? "rebuild" : "project";
}

double baseWork(Index rows, ConstMatView weight) {
  return weight.empty() ? 0.0 : static_cast<double>(rows) * weight.rows * weight.cols;
}

double loraWork(Index rows, const LoraLayer& l) {
  return static_cast<double>(rows) * l.a.rows * (l.a.cols + l.b.rows) + baseWork(rows, l.weight);
}

// The layers' operands: host matrices, or device matrices on 'cuda'.
class LayerJob : public DeviceJob {
 public:
  using DeviceJob::DeviceJob;

 protected:
  cuda::LoraOperands readLora(Napi::Env env, const Napi::Object& args, Overlaps& overlaps) {
    cuda::LoraOperands l;
    l.a = operand(env, args, "A", overlaps);
    l.b = operand(env, args, "B", overlaps);
    l.scale = readScale(env, args, "scale");
    l.weight = optionalOperand(env, args, "weight", overlaps);
    l.bias = readVector(env, args, "bias", static_cast<size_t>(l.b.rows()), true, false, keep, overlaps);
    return l;
  }
  cuda::EigenLoraOperands readEigenLora(Napi::Env env, const Napi::Object& args, Overlaps& overlaps) {
    cuda::EigenLoraOperands l;
    l.componentsA = operand(env, args, "componentsA", overlaps);
    l.alpha = operand(env, args, "alpha", overlaps);
    l.beta = operand(env, args, "beta", overlaps);
    l.componentsB = operand(env, args, "componentsB", overlaps);
    l.scale = readScale(env, args, "scale");
    l.weight = optionalOperand(env, args, "weight", overlaps);
    l.bias = readVector(env, args, "bias", static_cast<size_t>(l.componentsB.rows()), true, false, keep, overlaps);
    return l;
  }
  // The EigenLoRA order: the CPU takes any; the GPU computes the 'project' order only.
  ProductOrder readOrder(Napi::Env env, const Napi::Object& args) {
    if (device_ == Device::Cuda && args.Get("order").IsUndefined()) return ProductOrder::Project;
    const auto order = static_cast<ProductOrder>(readChoice(env, args, "order", {"auto", "project", "rebuild"}));
    if (device_ == Device::Cuda && order == ProductOrder::Rebuild) {
      throwError(env, code::kInvalidArgument, "order: 'rebuild' is not available on the GPU (use 'auto' or 'project')");
    }
    return device_ == Device::Cuda ? ProductOrder::Project : order;
  }
};

class LoraForwardJob : public LayerJob {
 public:
  using LayerJob::LayerJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = begin(info);
    Overlaps overlaps;
    x_ = operand(env, args, "x", overlaps);
    layer_ = readLora(env, args, overlaps);
    y_ = readOutMatrix(env, args, "y", keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] { checkLoraForward(x_.shape(), cuda::coreLayer(layer_), y_.view()); });
  }

 protected:
  void run() override {
    runOn([&] { loraForward(x_.host, cuda::coreLayer(layer_), y_); },
          [&](cuda::Plugin& p) { return p.loraForward(x_, layer_, y_); });
  }
  double hostWork() const override { return loraWork(x_.rows(), cuda::coreLayer(layer_)); }

 private:
  cuda::Operand x_;
  cuda::LoraOperands layer_;
  MatView y_;
};

// A backward pass: x, dy, the layer (`readLayer`), then dx (optional) and the two
// gradients named `first` and `second`.
class BackwardJob : public LayerJob {
 public:
  using LayerJob::LayerJob;

 protected:
  template <typename ReadLayer>
  Napi::Object readBackward(const Napi::CallbackInfo& info, Overlaps& overlaps, ReadLayer readLayer, const char* first,
                            const char* second) {
    Napi::Env env = info.Env();
    const Napi::Object args = begin(info);
    x_ = operand(env, args, "x", overlaps);
    dy_ = operand(env, args, "dy", overlaps);
    readLayer(env, args);
    dx_ = readOptionalOutMatrix(env, args, "dx", keep, overlaps);
    first_ = readOutMatrix(env, args, first, keep, overlaps);
    second_ = readOutMatrix(env, args, second, keep, overlaps);
    return args;
  }

  cuda::Operand x_, dy_;
  MatView dx_, first_, second_;
};

class LoraBackwardJob : public BackwardJob {
 public:
  using BackwardJob::BackwardJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Overlaps overlaps;
    readBackward(info, overlaps, [&](Napi::Env e, const Napi::Object& a) { layer_ = readLora(e, a, overlaps); }, "dA", "dB");
    overlaps.check(env);
    checkNow(env, [&] {
      checkLoraBackward(x_.shape(), dy_.shape(), cuda::coreLayer(layer_), dx_.view(), first_.view(), second_.view());
    });
  }

 protected:
  void run() override {
    runOn([&] { loraBackward(x_.host, dy_.host, cuda::coreLayer(layer_), dx_, first_, second_); },
          [&](cuda::Plugin& p) { return p.loraBackward(x_, dy_, layer_, dx_, first_, second_); });
  }
  double hostWork() const override { return 2 * loraWork(x_.rows(), cuda::coreLayer(layer_)); }

 private:
  cuda::LoraOperands layer_;
};

class EigenLoraForwardJob : public LayerJob {
 public:
  using LayerJob::LayerJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = begin(info);
    Overlaps overlaps;
    x_ = operand(env, args, "x", overlaps);
    layer_ = readEigenLora(env, args, overlaps);
    y_ = readOutMatrix(env, args, "y", keep, overlaps);
    order_ = readOrder(env, args);
    overlaps.check(env);
    checkNow(env, [&] { checkEigenLoraForward(x_.shape(), cuda::coreLayer(layer_), y_.view()); });
  }

 protected:
  void run() override {
    runOn([&] { order_ = eigenLoraForward(x_.host, cuda::coreLayer(layer_), y_, order_); },
          [&](cuda::Plugin& p) { return p.eigenLoraForward(x_, layer_, y_); });
  }
  double hostWork() const override {
    const EigenLoraLayer l = cuda::coreLayer(layer_);
    const ProductOrder o = order_ == ProductOrder::Auto ? chooseOrder(x_.rows(), l, false, false) : order_;
    return eigenLoraCost(x_.rows(), l, o, false, false) + baseWork(x_.rows(), l.weight);
  }
  Napi::Value result(Napi::Env env) override { return Napi::String::New(env, orderName(order_)); }

 private:
  cuda::Operand x_;
  cuda::EigenLoraOperands layer_;
  MatView y_;
  ProductOrder order_ = ProductOrder::Auto;
};

class EigenLoraBackwardJob : public BackwardJob {
 public:
  using BackwardJob::BackwardJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Overlaps overlaps;
    const Napi::Object args = readBackward(
        info, overlaps, [&](Napi::Env e, const Napi::Object& a) { layer_ = readEigenLora(e, a, overlaps); }, "dAlpha",
        "dBeta");
    order_ = readOrder(env, args);
    overlaps.check(env);
    checkNow(env, [&] {
      checkEigenLoraBackward(x_.shape(), dy_.shape(), cuda::coreLayer(layer_), dx_.view(), first_.view(),
                             second_.view());
    });
  }

 protected:
  void run() override {
    runOn([&] { order_ = eigenLoraBackward(x_.host, dy_.host, cuda::coreLayer(layer_), dx_, first_, second_, order_); },
          [&](cuda::Plugin& p) { return p.eigenLoraBackward(x_, dy_, layer_, dx_, first_, second_); });
  }
  double hostWork() const override {
    const EigenLoraLayer l = cuda::coreLayer(layer_);
    const bool inputGrad = !dx_.empty();
    const ProductOrder o = order_ == ProductOrder::Auto ? chooseOrder(x_.rows(), l, true, inputGrad) : order_;
    return eigenLoraCost(x_.rows(), l, o, true, inputGrad) + (inputGrad ? baseWork(x_.rows(), l.weight) : 0.0);
  }
  Napi::Value result(Napi::Env env) override { return Napi::String::New(env, orderName(order_)); }

 private:
  cuda::EigenLoraOperands layer_;
  ProductOrder order_ = ProductOrder::Auto;
};

class LinearForwardJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    x_ = readMatrix(env, args, "x", keep, overlaps);
    weight_ = readMatrix(env, args, "weight", keep, overlaps);
    bias_ = readVector(env, args, "bias", static_cast<size_t>(weight_.rows), true, false, keep, overlaps);
    y_ = readOutMatrix(env, args, "y", keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] { checkLinearForward(x_, weight_, y_.view()); });
  }

 protected:
  void run() override { linearForward(x_, weight_, bias_, y_); }
  double work() const override { return baseWork(x_.rows, weight_); }

 private:
  ConstMatView x_, weight_;
  const float* bias_ = nullptr;
  MatView y_;
};

class LinearBackwardJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    x_ = readMatrix(env, args, "x", keep, overlaps);
    dy_ = readMatrix(env, args, "dy", keep, overlaps);
    weight_ = readOptionalMatrix(env, args, "weight", keep, overlaps);
    dx_ = readOptionalOutMatrix(env, args, "dx", keep, overlaps);
    dWeight_ = readOptionalOutMatrix(env, args, "dWeight", keep, overlaps);
    dBias_ = const_cast<float*>(readVector(env, args, "dBias", static_cast<size_t>(dy_.cols), true, true, keep, overlaps));
    overlaps.check(env);
    checkNow(env, [&] { checkLinearBackward(x_, dy_, weight_, dx_.view(), dWeight_.view()); });
  }

 protected:
  void run() override { linearBackward(x_, dy_, weight_, dx_, dWeight_, dBias_); }
  double work() const override {
    const double product = static_cast<double>(x_.rows) * x_.cols * dy_.cols;
    return (dx_.empty() ? 0.0 : product) + (dWeight_.empty() ? 0.0 : product) + static_cast<double>(dy_.rows) * dy_.cols;
  }

 private:
  ConstMatView x_, dy_, weight_;
  MatView dx_, dWeight_;
  float* dBias_ = nullptr;
};

class AddLowRankJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    target_ = readOutMatrix(env, args, "target", keep, overlaps);
    a_ = readMatrix(env, args, "A", keep, overlaps);
    b_ = readMatrix(env, args, "B", keep, overlaps);
    scale_ = readScale(env, args, "scale");
    transposed_ = args.Get("transposed").ToBoolean();
    overlaps.check(env);
    checkNow(env, [&] { checkAddLowRank(target_.view(), b_, a_, transposed_); });
  }

 protected:
  void run() override { addLowRank(target_, b_, a_, scale_, transposed_); }

 private:
  MatView target_;
  ConstMatView a_, b_;
  float scale_ = 1.0f;
  bool transposed_ = false;
};

}  // namespace

void registerLowrank(Napi::Env env, Napi::Object exports) {
  exportJob<LoraForwardJob>(env, exports, "loraForward");
  exportJob<LoraBackwardJob>(env, exports, "loraBackward");
  exportJob<EigenLoraForwardJob>(env, exports, "eigenLoraForward");
  exportJob<EigenLoraBackwardJob>(env, exports, "eigenLoraBackward");
  exportJob<LinearForwardJob>(env, exports, "linearForward");
  exportJob<LinearBackwardJob>(env, exports, "linearBackward");
  exportJob<AddLowRankJob>(env, exports, "addLowRank");
  exports.Set("chooseOrder", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
                // Which order `auto` takes for these shapes: cheap, synchronous, no buffers read.
                Napi::Env env = info.Env();
                const Napi::Object args = requireObject(env, info[0], "arguments");
                const int64_t kMax = 1LL << 40;
                const Index rows = readInteger(env, args, "rows", 1, kMax);
                EigenLoraLayer shape;
                shape.componentsA = {nullptr, readInteger(env, args, "dIn", 1, kMax), readInteger(env, args, "kA", 1, kMax)};
                shape.componentsB = {nullptr, readInteger(env, args, "dOut", 1, kMax), readInteger(env, args, "kB", 1, kMax)};
                shape.alpha = {nullptr, shape.componentsA.cols, readInteger(env, args, "rank", 1, kMax)};
                const bool backward = args.Get("backward").ToBoolean();
                const bool inputGrad = args.Get("inputGrad").ToBoolean();
                return Napi::String::New(env, orderName(chooseOrder(rows, shape, backward, inputGrad)));
              }));
}

}  // namespace eigenlorax::addon
