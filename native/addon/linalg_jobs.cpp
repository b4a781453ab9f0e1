// rsvd (either backend), orthonormalize and completeBasis behind the async boundary.
#include "../core/linalg.h"
#include "device.h"
#include "op_args.h"

namespace eigenlorax::addon {
namespace {

class RsvdJob : public DeviceJob {
 public:
  using DeviceJob::DeviceJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = begin(info);
    Overlaps overlaps;
    a_ = operand(env, args, "matrix", overlaps);
    options_ = readRsvdOptions(env, args);
    out_ = readRsvdOutputs(env, args, options_.rank, keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] { checkRsvdArguments(a_.shape(), options_, out_.u, out_.v); });
  }

 protected:
  void run() override {
    runOn([&] { info_ = rsvd(a_.host, options_, out_.u, out_.s, out_.v); },
          [&](cuda::Plugin& p) { return p.rsvd(a_, options_, out_.u, out_.s, out_.v, info_); });
  }
  Napi::Value result(Napi::Env env) override { return rsvdResult(env, info_); }

 private:
  cuda::Operand a_;
  RsvdOptions options_;
  RsvdOutputs out_;
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
    seed_ = static_cast<uint64_t>(readInteger(env, args, "seed", 0, kMaxSafeInteger));
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
