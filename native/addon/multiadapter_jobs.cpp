// Many adapters in one batch, behind the async boundary.
#include "../core/multiadapter.h"
#include "job.h"
#include "op_args.h"

namespace eigenlorax::addon {
namespace {

class EigenBankJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    x_ = readMatrix(env, args, "x", keep, overlaps);
    bank_.componentsA = readMatrix(env, args, "componentsA", keep, overlaps);
    bank_.componentsB = readMatrix(env, args, "componentsB", keep, overlaps);
    bank_.count = readInteger(env, args, "count", 0, 1LL << 31);
    const size_t perAdapter = static_cast<size_t>(bank_.componentsA.cols * bank_.componentsB.cols);
    bank_.mixing = readVector(env, args, "mixing", perAdapter * static_cast<size_t>(bank_.count), false, false, keep,
                              overlaps);
    rows_ = readInt32(env, args, "rows", static_cast<size_t>(x_.rows), keep, overlaps);
    weight_ = readOptionalMatrix(env, args, "weight", keep, overlaps);
    bias_ = readVector(env, args, "bias", static_cast<size_t>(bank_.componentsB.rows), true, false, keep, overlaps);
    y_ = readOutMatrix(env, args, "y", keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] { checkEigenBankApply(x_, bank_, rows_, weight_, y_); });
  }

 protected:
  void run() override { eigenBankApply(x_, bank_, rows_, weight_, bias_, y_); }

 private:
  ConstMatView x_, weight_;
  EigenAdapterBank bank_;
  const int32_t* rows_ = nullptr;
  const float* bias_ = nullptr;
  MatView y_;
};

class LoraBankJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = requireObject(env, info[0], "arguments");
    Overlaps overlaps;
    x_ = readMatrix(env, args, "x", keep, overlaps);
    readFactorPairs(env, args, [&](const Napi::Value& a, const Napi::Value& b, float scale, const std::string& name) {
      bank_.a.push_back(readMatrixValue(env, a, name + ".A", keep, overlaps));
      bank_.b.push_back(readMatrixValue(env, b, name + ".B", keep, overlaps));
      bank_.scales.push_back(scale);
    });
    rows_ = readInt32(env, args, "rows", static_cast<size_t>(x_.rows), keep, overlaps);
    weight_ = readOptionalMatrix(env, args, "weight", keep, overlaps);
    y_ = readOutMatrix(env, args, "y", keep, overlaps);
    bias_ = readVector(env, args, "bias", static_cast<size_t>(y_.cols), true, false, keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] { checkLoraBankApply(x_, bank_, rows_, weight_, y_); });
  }

 protected:
  void run() override { loraBankApply(x_, bank_, rows_, weight_, bias_, y_); }

 private:
  ConstMatView x_, weight_;
  LoraBank bank_;
  const int32_t* rows_ = nullptr;
  const float* bias_ = nullptr;
  MatView y_;
};

}  // namespace

void registerMultiAdapter(Napi::Env env, Napi::Object exports) {
  exportJob<EigenBankJob>(env, exports, "eigenBankApply");
  exportJob<LoraBankJob>(env, exports, "loraBankApply");
}

}  // namespace eigenlorax::addon
