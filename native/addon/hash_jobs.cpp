// SHA-256 (core/sha256.h) behind the async boundary, for the content digests and subspace
// ids hashed over hundreds of megabytes: a stream is an External (registered, so a foreign
// External is refused) whose updates and digest are jobs. They are always queued, never run
// inline, and the compute thread runs jobs in the order they were called, so JavaScript can
// queue the next update without waiting for the last; each update's arrays are the job's
// own (Keep: copied when called, or owned memory held), so the caller may reuse its buffer
// at once.
#include <memory>

#include "../core/sha256.h"
#include "job.h"
#include "shared_external.h"

namespace eigenlorax::addon {
namespace {

struct HashStream {
  Sha256 sha;
  bool finished = false;  // on the compute thread only
};

std::shared_ptr<HashStream> unwrapStream(Napi::Env env, const Napi::Object& args) {
  const Napi::Value value = args.Get("stream");
  if (std::shared_ptr<HashStream> stream = SharedExternal<HashStream>::find(value)) return stream;
  badArgument(env, "stream", "a stream from sha256Stream", value);
}

Napi::Value createStream(const Napi::CallbackInfo& info) {
  return SharedExternal<HashStream>::wrap(info.Env(), std::make_shared<HashStream>());
}

class HashJob : public Job {
 public:
  using Job::Job;

 protected:
  double work() const override { return kInlineWork; }  // always queued: updates stay in call order
  bool finiteResult() const override { return false; }  // bytes, not numbers
  void requireOpen() const {
    if (stream_->finished) throw CoreError(code::kInvalidArgument, "stream: its digest was already taken");
  }
  std::shared_ptr<HashStream> stream_;
};

class UpdateJob : public HashJob {
 public:
  using HashJob::HashJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    stream_ = unwrapStream(env, args);
    const Napi::Array parts = readArray(env, args, "parts");
    Overlaps overlaps;  // nothing is written: no overlap to refuse
    for (uint32_t i = 0; i < parts.Length(); ++i) {
      parts_.push_back(readBytesValue(env, parts.Get(i), "parts[" + std::to_string(i) + "]", keep, overlaps));
    }
  }

 protected:
  void run() override {
    requireOpen();
    for (const Bytes& part : parts_) stream_->sha.update(part.data, part.bytes);
  }

 private:
  std::vector<Bytes> parts_;
};

class DigestJob : public HashJob {
 public:
  using HashJob::HashJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    stream_ = unwrapStream(env, requireObject(env, info[0], "arguments"));
  }

 protected:
  void run() override {
    requireOpen();
    stream_->finished = true;
    digest_ = stream_->sha.finish();
  }
  Napi::Value result(Napi::Env env) override {
    static const char hex[] = "0123456789abcdef";
    std::string text(64, '0');
    for (size_t i = 0; i < digest_.size(); ++i) {
      text[2 * i] = hex[digest_[i] >> 4];
      text[2 * i + 1] = hex[digest_[i] & 15];
    }
    return Napi::String::New(env, text);
  }

 private:
  std::array<uint8_t, 32> digest_{};
};

}  // namespace

void registerHash(Napi::Env env, Napi::Object exports) {
  exports.Set("sha256Stream", Napi::Function::New(env, createStream, "sha256Stream"));
  exportJob<UpdateJob>(env, exports, "sha256Update");
  exportJob<DigestJob>(env, exports, "sha256Digest");
  exports.Set("sha256Accelerated", Napi::Function::New(
                                      env, [](const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), Sha256::accelerated()); },
                                      "sha256Accelerated"));
}

}  // namespace eigenlorax::addon
