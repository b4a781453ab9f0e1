// LoRA and EigenLoRA forward/backward behind the async boundary.
#include "../core/lowrank.h"
#include "job.h"

namespace eigenlorax::addon {
namespace {

const char* orderName(ProductOrder order) {
  return order == ProductOrder::Rebuild ? "rebuild" : "project";
}

ProductOrder readOrder(Napi::Env env, const Napi::Object& args) {
  return static_cast<ProductOrder>(readInteger(env, args, "order", 0, 2));
}

LoraLayer readLora(Napi::Env env, const Napi::Object& args, Keep& keep, Overlaps& overlaps) {
  LoraLayer layer;
  layer.a = readMatrix(env, args, "A", keep, overlaps);
  layer.b = readMatrix(env, args, "B", keep, overlaps);
  layer.scale = readScale(env, args, "scale");
  layer.weight = readOptionalMatrix(env, args, "weight", keep, overlaps);
  layer.bias = readVector(env, args, "bias", static_cast<size_t>(layer.b.rows), true, false, keep, overlaps);
  return layer;
}

EigenLoraLayer readEigenLora(Napi::Env env, const Napi::Object& args, Keep& keep, Overlaps& overlaps) {
  EigenLoraLayer layer;
  layer.componentsA = readMatrix(env, args, "componentsA", keep, overlaps);
  layer.alpha = readMatrix(env, args, "alpha", keep, overlaps);
  layer.beta = readMatrix(env, args, "beta", keep, overlaps);
  layer.componentsB = readMatrix(env, args, "componentsB", keep, overlaps);
  layer.scale = readScale(env, args, "scale");
  layer.weight = readOptionalMatrix(env, args, "weight", keep, overlaps);
  layer.bias =
      readVector(env, args, "bias", static_cast<size_t>(layer.componentsB.rows), true, false, keep, overlaps);
  return layer;
}

double baseWork(Index rows, ConstMatView weight) {
  return weight.empty() ? 0.0 : static_cast<double>(rows) * weight.rows * weight.cols;
}

double loraWork(Index rows, const LoraLayer& l) {
  return static_cast<double>(rows) * l.a.rows * (l.a.cols + l.b.rows) + baseWork(rows, l.weight);
}

class LoraForwardJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    x_ = readMatrix(env, args, "x", keep, overlaps);
    layer_ = readLora(env, args, keep, overlaps);
    y_ = readOutMatrix(env, args, "y", keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] { checkLora(x_, layer_, "y", y_.rows, y_.cols); });
  }

 protected:
  void run() override { loraForward(x_, layer_, y_); }
  double work() const override { return loraWork(x_.rows, layer_); }

 private:
  ConstMatView x_;
  LoraLayer layer_;
  MatView y_;
};

class LoraBackwardJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    x_ = readMatrix(env, args, "x", keep, overlaps);
    dy_ = readMatrix(env, args, "dy", keep, overlaps);
    layer_ = readLora(env, args, keep, overlaps);
    dx_ = readOptionalOutMatrix(env, args, "dx", keep, overlaps);
    dA_ = readOutMatrix(env, args, "dA", keep, overlaps);
    dB_ = readOutMatrix(env, args, "dB", keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] {
      checkLora(x_, layer_, "dy", dy_.rows, dy_.cols);
      requireShape("dA", dA_.rows, dA_.cols, layer_.a.rows, layer_.a.cols);
      requireShape("dB", dB_.rows, dB_.cols, layer_.b.rows, layer_.b.cols);
      if (!dx_.empty()) requireShape("dx", dx_.rows, dx_.cols, x_.rows, x_.cols);
    });
  }

 protected:
  void run() override { loraBackward(x_, dy_, layer_, dx_, dA_, dB_); }
  double work() const override { return 2 * loraWork(x_.rows, layer_); }

 private:
  ConstMatView x_, dy_;
  LoraLayer layer_;
  MatView dx_, dA_, dB_;
};

class EigenLoraForwardJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    x_ = readMatrix(env, args, "x", keep, overlaps);
    layer_ = readEigenLora(env, args, keep, overlaps);
    y_ = readOutMatrix(env, args, "y", keep, overlaps);
    order_ = readOrder(env, args);
    overlaps.check(env);
    checkNow(env, [&] {
      checkEigenLora(x_, layer_);
      requireShape("y", y_.rows, y_.cols, x_.rows, layer_.componentsB.rows);
    });
  }

 protected:
  void run() override { order_ = eigenLoraForward(x_, layer_, y_, order_); }
  double work() const override {
    const ProductOrder o = order_ == ProductOrder::Auto ? chooseOrder(x_.rows, layer_, false, false) : order_;
    return eigenLoraCost(x_.rows, layer_, o, false, false) + baseWork(x_.rows, layer_.weight);
  }
  Napi::Value result(Napi::Env env) override { return Napi::String::New(env, orderName(order_)); }

 private:
  ConstMatView x_;
  EigenLoraLayer layer_;
  MatView y_;
  ProductOrder order_ = ProductOrder::Auto;
};

class EigenLoraBackwardJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    x_ = readMatrix(env, args, "x", keep, overlaps);
    dy_ = readMatrix(env, args, "dy", keep, overlaps);
    layer_ = readEigenLora(env, args, keep, overlaps);
    dx_ = readOptionalOutMatrix(env, args, "dx", keep, overlaps);
    dAlpha_ = readOutMatrix(env, args, "dAlpha", keep, overlaps);
    dBeta_ = readOutMatrix(env, args, "dBeta", keep, overlaps);
    order_ = readOrder(env, args);
    overlaps.check(env);
    checkNow(env, [&] {
      checkEigenLora(x_, layer_);
      requireShape("dy", dy_.rows, dy_.cols, x_.rows, layer_.componentsB.rows);
      requireShape("dAlpha", dAlpha_.rows, dAlpha_.cols, layer_.alpha.rows, layer_.alpha.cols);
      requireShape("dBeta", dBeta_.rows, dBeta_.cols, layer_.beta.rows, layer_.beta.cols);
      if (!dx_.empty()) requireShape("dx", dx_.rows, dx_.cols, x_.rows, x_.cols);
    });
  }

 protected:
  void run() override { order_ = eigenLoraBackward(x_, dy_, layer_, dx_, dAlpha_, dBeta_, order_); }
  double work() const override {
    const bool inputGrad = !dx_.empty();
    const ProductOrder o = order_ == ProductOrder::Auto ? chooseOrder(x_.rows, layer_, true, inputGrad) : order_;
    return eigenLoraCost(x_.rows, layer_, o, true, inputGrad) + (inputGrad ? baseWork(x_.rows, layer_.weight) : 0.0);
  }
  Napi::Value result(Napi::Env env) override { return Napi::String::New(env, orderName(order_)); }

 private:
  ConstMatView x_, dy_;
  EigenLoraLayer layer_;
  MatView dx_, dAlpha_, dBeta_;
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
    checkNow(env, [&] {
      requireShape("weight", weight_.rows, weight_.cols, weight_.rows, x_.cols);
      requireShape("y", y_.rows, y_.cols, x_.rows, weight_.rows);
    });
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
    checkNow(env, [&] {
      requireShape("dy", dy_.rows, dy_.cols, x_.rows, dy_.cols);
      if (!dx_.empty()) {
        if (weight_.empty()) throw CoreError(code::kInvalidArgument, "weight: needed to compute dx");
        requireShape("weight", weight_.rows, weight_.cols, dy_.cols, x_.cols);
        requireShape("dx", dx_.rows, dx_.cols, x_.rows, x_.cols);
      }
      if (!dWeight_.empty()) requireShape("dWeight", dWeight_.rows, dWeight_.cols, dy_.cols, x_.cols);
    });
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
    checkNow(env, [&] {
      requireShape("B", b_.rows, b_.cols, b_.rows, a_.rows);
      if (transposed_) requireShape("target", target_.rows, target_.cols, a_.cols, b_.rows);
      else requireShape("target", target_.rows, target_.cols, b_.rows, a_.cols);
    });
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
