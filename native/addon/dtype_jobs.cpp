// dtype conversion behind the async boundary.
#include "../core/dtype.h"
#include "job.h"

namespace eigenlorax::addon {
namespace {

DType readDType(Napi::Env env, const Napi::Object& args, const char* name) {
  return static_cast<DType>(readChoice(env, args, name, {"f32", "f16", "bf16", "f64"}));
}

class ConvertJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    from_ = readDType(env, args, "from");
    to_ = readDType(env, args, "to");
    if (from_ != DType::F32 && to_ != DType::F32) {
      throwError(env, code::kInvalidArgument, "convert: one of from, to must be f32");
    }
    src_ = readBytes(env, args, "src", false, keep, overlaps);
    dst_ = readBytes(env, args, "dst", true, keep, overlaps);
    overlaps.check(env);
    const size_t inSize = dtypeSize(from_), outSize = dtypeSize(to_);
    if (src_.bytes % inSize != 0) {
      throwError(env, code::kShapeMismatch, "src: " + std::to_string(src_.bytes) + " bytes is not a whole number of " +
                                                dtypeName(from_) + " elements");
    }
    count_ = src_.bytes / inSize;
    if (dst_.bytes != count_ * outSize) {
      throwError(env, code::kShapeMismatch, "dst: expected " + std::to_string(count_ * outSize) + " bytes for " +
                                                std::to_string(count_) + " " + dtypeName(to_) +
                                                " elements, received " + std::to_string(dst_.bytes));
    }
    if (to_ == DType::F32 && reinterpret_cast<uintptr_t>(dst_.data) % alignof(float) != 0) {
      throwError(env, code::kInvalidArgument, "dst: f32 output must be 4-byte aligned");
    }
  }

 protected:
  void run() override { convert(src_.data, from_, dst_.data, to_, count_); }
  double work() const override { return static_cast<double>(count_); }
  bool finiteResult() const override { return false; }  // f16 overflow to Inf is the conversion's answer

 private:
  DType from_ = DType::F32, to_ = DType::F32;
  Bytes src_, dst_;
  size_t count_ = 0;
};

}  // namespace

void registerDtype(Napi::Env env, Napi::Object exports) {
  exportJob<ConvertJob>(env, exports, "convert");
}

}  // namespace eigenlorax::addon
