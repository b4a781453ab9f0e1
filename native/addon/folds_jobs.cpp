// analyze's held-out bases of one module (native/core/folds.h) behind the async boundary.
#include "../core/folds.h"
#include "job.h"
#include "op_args.h"

namespace eigenlorax::addon {

std::vector<FactorPair> readSubspaceAdapters(Napi::Env env, const Napi::Object& args, Keep& keep, Overlaps& overlaps);

namespace {

constexpr int64_t kMaxSafe = 9007199254740991LL;

Napi::Object sideResult(Napi::Env env, const SideBasis& s, Index d, bool components) {
  Napi::Object out = Napi::Object::New(env);
  Napi::Float32Array singular = Napi::Float32Array::New(env, s.singular.size());
  std::copy(s.singular.begin(), s.singular.end(), singular.Data());
  out.Set("singular", singular);
  out.Set("energy", Napi::Number::New(env, s.energy));
  out.Set("exact", Napi::Boolean::New(env, s.exact));
  if (components) {
    Napi::Object m = Napi::Object::New(env);
    Napi::Float32Array data = Napi::Float32Array::New(env, s.components.size());
    std::copy(s.components.begin(), s.components.end(), data.Data());
    m.Set("rows", Napi::Number::New(env, static_cast<double>(d)));
    m.Set("cols", Napi::Number::New(env, static_cast<double>(s.k)));
    m.Set("data", data);
    out.Set("components", m);
  }
  return out;
}

class FoldBasesJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    adapters_ = readSubspaceAdapters(env, args, keep, overlaps);
    folds_ = readInt32(env, args, "folds", adapters_.size(), keep, overlaps);
    options_.stacking = readStacking(env, args);
    options_.weighting = readWeighting(env, args);
    options_.oversample = readInteger(env, args, "oversample", 0, kMaxSafe);
    options_.powerIters = static_cast<int>(readInteger(env, args, "powerIters", 0, 1000));
    options_.seed = static_cast<uint64_t>(readInteger(env, args, "seed", 0, kMaxSafe));
    options_.componentsA = readInteger(env, args, "componentsA", 1, kMaxSafe);
    options_.componentsB = readInteger(env, args, "componentsB", 1, kMaxSafe);
    options_.curveA = readInteger(env, args, "curveA", 1, kMaxSafe);
    options_.curveB = readInteger(env, args, "curveB", 1, kMaxSafe);
    options_.foldCount = static_cast<int32_t>(readInteger(env, args, "foldCount", 1, 1 << 30));
    options_.projectHeldOut = args.Get("projectHeldOut").ToBoolean();
    warmA_ = readOptionalMatrix(env, args, "warmA", keep, overlaps);
    warmB_ = readOptionalMatrix(env, args, "warmB", keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] { checkFoldBases(adapters_, folds_, options_, warmA_, warmB_); });
  }

 protected:
  void run() override { out_ = foldBases(adapters_, folds_, options_, warmA_, warmB_); }
  Napi::Value result(Napi::Env env) override {
    const Index dIn = adapters_[0].a.cols, dOut = adapters_[0].b.rows;
    Napi::Object out = Napi::Object::New(env);
    out.Set("curveA", sideResult(env, out_.curveA, dIn, false));
    out.Set("curveB", sideResult(env, out_.curveB, dOut, false));
    Napi::Array folds = Napi::Array::New(env, out_.present.size());
    for (size_t f = 0; f < out_.present.size(); ++f) {
      if (!out_.present[f]) {
        folds.Set(static_cast<uint32_t>(f), env.Null());
        continue;
      }
      Napi::Object fold = Napi::Object::New(env);
      fold.Set("A", sideResult(env, out_.foldA[f], dIn, true));
      fold.Set("B", sideResult(env, out_.foldB[f], dOut, true));
      folds.Set(static_cast<uint32_t>(f), fold);
    }
    out.Set("folds", folds);
    if (options_.projectHeldOut) {
      const auto matrixOf = [&](const RowMatF& m) {
        Napi::Object o = Napi::Object::New(env);
        Napi::Float32Array data = Napi::Float32Array::New(env, static_cast<size_t>(m.size()));
        std::copy(m.data(), m.data() + m.size(), data.Data());
        o.Set("rows", Napi::Number::New(env, static_cast<double>(m.rows())));
        o.Set("cols", Napi::Number::New(env, static_cast<double>(m.cols())));
        o.Set("data", data);
        return o;
      };
      Napi::Array held = Napi::Array::New(env, out_.heldOut.size());
      for (size_t i = 0; i < out_.heldOut.size(); ++i) {
        const HeldOutProjection& h = out_.heldOut[i];
        if (!h.present) {
          held.Set(static_cast<uint32_t>(i), env.Null());
          continue;
        }
        Napi::Object o = Napi::Object::New(env);
        o.Set("alpha", matrixOf(h.alpha));
        o.Set("beta", matrixOf(h.beta));
        o.Set("norm", Napi::Number::New(env, h.norm));
        o.Set("error", Napi::Number::New(env, h.error));
        o.Set("overlapA", Napi::Number::New(env, h.overlapA));
        o.Set("overlapB", Napi::Number::New(env, h.overlapB));
        held.Set(static_cast<uint32_t>(i), o);
      }
      out.Set("heldOut", held);
    }
    return out;
  }

 private:
  std::vector<FactorPair> adapters_;
  const int32_t* folds_ = nullptr;
  FoldBasesOptions options_;
  ConstMatView warmA_, warmB_;
  FoldBases out_;
};

class FactorOverlapsJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    adapters_ = readSubspaceAdapters(env, args, keep, overlaps);
    basisA_ = readMatrix(env, args, "basisA", keep, overlaps);
    basisB_ = readMatrix(env, args, "basisB", keep, overlaps);
    overlapA_ = readFloat64Out(env, args, "overlapA", adapters_.size(), keep, overlaps);
    overlapB_ = readFloat64Out(env, args, "overlapB", adapters_.size(), keep, overlaps);
    overlaps.check(env);
  }

 protected:
  void run() override { factorOverlaps(adapters_, basisA_, basisB_, overlapA_, overlapB_); }

 private:
  std::vector<FactorPair> adapters_;
  ConstMatView basisA_, basisB_;
  double* overlapA_ = nullptr;
  double* overlapB_ = nullptr;
};

}  // namespace

void registerFolds(Napi::Env env, Napi::Object exports) {
  exportJob<FoldBasesJob>(env, exports, "foldBases");
  exportJob<FactorOverlapsJob>(env, exports, "factorOverlaps");
}

}  // namespace eigenlorax::addon
