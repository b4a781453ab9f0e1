// Many adapters in one batch (either backend), behind the async boundary.
#include "../core/multiadapter.h"
#include "device.h"
#include "op_args.h"

namespace eigenlorax::addon {
namespace {

// What both banks read besides the adapters: x, each row's adapter, the base layer, y.
class BankJob : public DeviceJob {
 public:
  using DeviceJob::DeviceJob;

 protected:
  void readRowsAndWeight(Napi::Env env, const Napi::Object& args, Overlaps& overlaps) {
    rows_ = readInt32(env, args, "rows", static_cast<size_t>(x_.rows()), keep, overlaps);
    weight_ = optionalOperand(env, args, "weight", overlaps);
  }

  cuda::Operand x_, weight_;
  const int32_t* rows_ = nullptr;
  const float* bias_ = nullptr;
  MatView y_;
};

class EigenBankJob : public BankJob {
 public:
  using BankJob::BankJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = begin(info);
    Overlaps overlaps;
    x_ = operand(env, args, "x", overlaps);
    bank_.componentsA = operand(env, args, "componentsA", overlaps);
    bank_.componentsB = operand(env, args, "componentsB", overlaps);
    bank_.count = readInteger(env, args, "count", 0, int64_t{1} << 31);
    const int64_t kA = bank_.componentsA.cols(), kB = bank_.componentsB.cols();
    // The mixing matrices as a flat Float32Array, adapter after adapter, or (on 'cuda') a
    // device matrix of (count K_A) x K_B.
    if (args.Get("mixing").IsTypedArray()) {
      const float* data = readVector(env, args, "mixing", static_cast<size_t>(kA * kB * bank_.count), false, false,
                                     keep, overlaps);
      bank_.mixing = cuda::Operand::of(ConstMatView{data, bank_.count * kA, kB});
    } else {
      bank_.mixing = operand(env, args, "mixing", overlaps);
    }
    readRowsAndWeight(env, args, overlaps);
    bias_ = readVector(env, args, "bias", static_cast<size_t>(bank_.componentsB.rows()), true, false, keep, overlaps);
    y_ = readOutMatrix(env, args, "y", keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] { checkEigenBankApply(x_.shape(), cuda::coreBank(bank_), rows_, weight_.shape(), y_); });
  }

 protected:
  void run() override {
    runOn([&] { eigenBankApply(x_.host, cuda::coreBank(bank_), rows_, weight_.host, bias_, y_); },
          [&](cuda::Plugin& p) { return p.eigenBankApply(x_, bank_, rows_, weight_, bias_, y_); });
  }

 private:
  cuda::EigenBankOperands bank_;
};

class LoraBankJob : public BankJob {
 public:
  using BankJob::BankJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = begin(info);
    Overlaps overlaps;
    x_ = operand(env, args, "x", overlaps);
    readFactorPairs(env, args, [&](const Napi::Value& a, const Napi::Value& b, float scale, const std::string& name) {
      bank_.a.push_back(operandValue(env, a, name + ".A", overlaps));
      bank_.b.push_back(operandValue(env, b, name + ".B", overlaps));
      bank_.scales.push_back(scale);
    });
    readRowsAndWeight(env, args, overlaps);
    y_ = readOutMatrix(env, args, "y", keep, overlaps);
    bias_ = readVector(env, args, "bias", static_cast<size_t>(y_.cols), true, false, keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] { checkLoraBankApply(x_.shape(), cuda::coreBank(bank_), rows_, weight_.shape(), y_); });
  }

 protected:
  void run() override {
    runOn([&] { loraBankApply(x_.host, cuda::coreBank(bank_), rows_, weight_.host, bias_, y_); },
          [&](cuda::Plugin& p) { return p.loraBankApply(x_, bank_, rows_, weight_, bias_, y_); });
  }

 private:
  cuda::LoraBankOperands bank_;
};

}  // namespace

void registerMultiAdapter(Napi::Env env, Napi::Object exports) {
  exportJob<EigenBankJob>(env, exports, "eigenBankApply");
  exportJob<LoraBankJob>(env, exports, "loraBankApply");
}

}  // namespace eigenlorax::addon
