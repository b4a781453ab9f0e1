// The out-of-core module build (core/subspace_stream.h) behind the async boundary: a stream
// is an External (registered, so a foreign External is refused) that jobs share; each job
// holds it until it settles, and a second job on the same stream while one runs is refused.
#include <memory>

#include "../core/subspace_stream.h"
#include "job.h"
#include "op_args.h"
#include "shared_external.h"

namespace eigenlorax::addon {

std::vector<FactorPair> readSubspaceAdapters(Napi::Env env, const Napi::Object& args, Keep& keep, Overlaps& overlaps);
ModuleSubspaceOutputs readSubspaceOutputs(Napi::Env env, const Napi::Object& args, Keep& keep, Overlaps& overlaps);
Napi::Value subspaceInfoResult(Napi::Env env, const ModuleSubspaceInfo& info);

namespace {

constexpr int64_t kMaxSafe = 9007199254740991LL;

std::shared_ptr<ModuleStream> unwrapStream(Napi::Env env, const Napi::Object& args) {
  const Napi::Value value = args.Get("stream");
  if (std::shared_ptr<ModuleStream> stream = SharedExternal<ModuleStream>::find(value)) return stream;
  badArgument(env, "stream", "a module stream from createModuleStream", value);
}

Napi::Value createModuleStream(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Napi::Object args = requireObject(env, info[0], "arguments");
  ModuleSubspaceOptions o;
  o.stacking = readStacking(env, args);
  o.weighting = readWeighting(env, args);
  o.center = args.Get("center").ToBoolean();
  o.oversample = readInteger(env, args, "oversample", 0, kMaxSafe);
  o.powerIters = static_cast<int>(readInteger(env, args, "powerIters", 0, 1000));
  o.seed = static_cast<uint64_t>(readInteger(env, args, "seed", 0, kMaxSafe));
  const Index dIn = readInteger(env, args, "dIn", 1, kMaxSafe);
  const Index dOut = readInteger(env, args, "dOut", 1, kMaxSafe);
  const Index totalRank = readInteger(env, args, "totalRank", 1, kMaxSafe);
  const Index adapters = readInteger(env, args, "adapters", 1, kMaxSafe);
  const Index kA = readInteger(env, args, "kA", 1, kMaxSafe);
  const Index kB = readInteger(env, args, "kB", 1, kMaxSafe);
  std::shared_ptr<ModuleStream> stream;
  checkNow(env, [&] { stream = std::make_shared<ModuleStream>(dIn, dOut, totalRank, adapters, kA, kB, o); });
  Napi::Object out = Napi::Object::New(env);
  out.Set("stream", SharedExternal<ModuleStream>::wrap(env, stream));
  out.Set("passes", Napi::Number::New(env, stream->passes()));
  return out;
}

// A job on a stream: claims it on the JS thread (refusing a concurrent job), releases it
// when it settles.
class StreamJob : public Job {
 public:
  using Job::Job;
  ~StreamJob() override {
    if (claimed_) stream_->busy.store(false);
  }

 protected:
  void claim(Napi::Env env, const Napi::Object& args) {
    stream_ = unwrapStream(env, args);
    if (stream_->busy.exchange(true)) {
      stream_.reset();
      throwError(env, code::kInvalidArgument, "stream: another call on this stream is still running");
    }
    claimed_ = true;
  }
  std::shared_ptr<ModuleStream> stream_;

 private:
  bool claimed_ = false;
};

class StreamAddJob : public StreamJob {
 public:
  using StreamJob::StreamJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    adapters_ = readSubspaceAdapters(env, args, keep, overlaps);
    claim(env, args);
    checkNow(env, [&] { stream_->checkChunk(adapters_); });
  }

 protected:
  void run() override { stream_->add(adapters_); }

 private:
  std::vector<FactorPair> adapters_;
};

class StreamEndPassJob : public StreamJob {
 public:
  using StreamJob::StreamJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    claim(env, requireObject(env, info[0], "arguments"));
  }

 protected:
  void run() override { stream_->endPass(); }
  Napi::Value result(Napi::Env env) override { return Napi::Boolean::New(env, stream_->finished()); }
};

class StreamFinishJob : public StreamJob {
 public:
  using StreamJob::StreamJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    out_ = readSubspaceOutputs(env, args, keep, overlaps);
    overlaps.check(env);
    claim(env, args);
    checkNow(env, [&] { stream_->checkFinish(out_); });
  }

 protected:
  void run() override { info_ = stream_->finish(out_); }
  Napi::Value result(Napi::Env env) override { return subspaceInfoResult(env, info_); }

 private:
  ModuleSubspaceOutputs out_;
  ModuleSubspaceInfo info_;
};

}  // namespace

void registerSubspaceStream(Napi::Env env, Napi::Object exports) {
  exports.Set("createModuleStream", Napi::Function::New(env, createModuleStream, "createModuleStream"));
  exportJob<StreamAddJob>(env, exports, "moduleStreamAdd");
  exportJob<StreamEndPassJob>(env, exports, "moduleStreamEndPass");
  exportJob<StreamFinishJob>(env, exports, "moduleStreamFinish");
}

}  // namespace eigenlorax::addon
