// rsvd, orthonormalize and completeBasis behind the async boundary.
#include "../core/linalg.h"
#include "job.h"

namespace eigenlorax::addon {
namespace {

constexpr int64_t kMaxSeed = 9007199254740991LL;  // Number.MAX_SAFE_INTEGER

class RsvdJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    a_ = readMatrix(env, args, "matrix", keep, overlaps);
    options_.rank = readInteger(env, args, "rank", 1, kMaxSeed);
    options_.oversample = readInteger(env, args, "oversample", 0, kMaxSeed);
    options_.powerIters = static_cast<int>(readInteger(env, args, "powerIters", 0, 1000));
    options_.seed = static_cast<uint64_t>(readInteger(env, args, "seed", 0, kMaxSeed));
    options_.method = static_cast<SvdMethod>(readInteger(env, args, "method", 0, 2));
    u_ = readOutMatrix(env, args, "U", keep, overlaps);
    v_ = readOutMatrix(env, args, "V", keep, overlaps);
    s_ = const_cast<float*>(readVector(env, args, "S", static_cast<size_t>(options_.rank), false, true, keep, overlaps));
    overlaps.check(env);
    checkNow(env, [&] { checkRsvdArguments(a_, options_, u_, v_); });
  }

 protected:
  void run() override { info_ = rsvd(a_, options_, u_, s_, v_); }
  Napi::Value result(Napi::Env env) override {
    Napi::Object out = Napi::Object::New(env);
    out.Set("exact", Napi::Boolean::New(env, info_.exact));
    out.Set("sketchSize", Napi::Number::New(env, static_cast<double>(info_.sketchSize)));
    return out;
  }

 private:
  ConstMatView a_;
  RsvdOptions options_;
  MatView u_, v_;
  float* s_ = nullptr;
  RsvdInfo info_;
};

class OrthonormalizeJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    in_ = readMatrix(env, args, "matrix", keep, overlaps);
    out_ = readOutMatrix(env, args, "out", keep, overlaps);
    overlaps.check(env);
  }

 protected:
  void run() override { orthonormalize(in_, out_); }

 private:
  ConstMatView in_;
  MatView out_;
};

class CompleteBasisJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    basis_ = readMatrix(env, args, "basis", keep, overlaps);
    seed_ = static_cast<uint64_t>(readInteger(env, args, "seed", 0, kMaxSeed));
    out_ = readOutMatrix(env, args, "out", keep, overlaps);
    overlaps.check(env);
  }

 protected:
  void run() override { completeBasis(basis_, seed_, out_); }

 private:
  ConstMatView basis_;
  uint64_t seed_ = 0;
  MatView out_;
};

}  // namespace

void registerLinalg(Napi::Env env, Napi::Object exports) {
  exportJob<RsvdJob>(env, exports, "rsvd");
  exportJob<OrthonormalizeJob>(env, exports, "orthonormalize");
  exportJob<CompleteBasisJob>(env, exports, "completeBasis");
}

}  // namespace eigenlorax::addon
