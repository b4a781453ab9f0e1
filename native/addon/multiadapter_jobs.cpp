// Many adapters in one batch (either backend), behind the async boundary. A pair cache
// (core/pair_cache.h) is an External (registered, so a foreign External is refused) that
// owns its copy of a bank's components; every job using it holds it until it settles.
#include "../core/multiadapter.h"
#include "../core/pair_cache.h"
#include "device.h"
#include "op_args.h"
#include "shared_external.h"

namespace eigenlorax::addon {
namespace {

std::shared_ptr<PairCache> unwrapCache(Napi::Env env, const Napi::Value& value) {
  if (std::shared_ptr<PairCache> cache = SharedExternal<PairCache>::find(value)) return cache;
  badArgument(env, "pairCache", "a pair cache from createPairCache", value);
}

RowMatF ownCopy(Napi::Env env, const Napi::Object& args, const char* name) {
  Keep keep;
  Overlaps overlaps;
  const ConstMatView v = readMatrix(env, args, name, keep, overlaps);
  return v.map();
}

// createPairCache({ componentsA, componentsB, budget }): the cache, holding copies of the
// components (a bank with this cache applies those).
Napi::Value createPairCache(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Napi::Object args = requireObject(env, info[0], "arguments");
  RowMatF a = ownCopy(env, args, "componentsA");
  RowMatF b = ownCopy(env, args, "componentsB");
  const auto budget = static_cast<size_t>(readInteger(env, args, "budget", 0, int64_t{1} << 50));
  return SharedExternal<PairCache>::wrap(env, std::make_shared<PairCache>(std::move(a), std::move(b), budget));
}

// pairCacheStats(cache): { pairs, bytes, budget } now.
Napi::Value pairCacheStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::shared_ptr<PairCache> cache = unwrapCache(env, info[0]);
  Napi::Object out = Napi::Object::New(env);
  out.Set("pairs", Napi::Number::New(env, static_cast<double>(cache->size())));
  out.Set("bytes", Napi::Number::New(env, static_cast<double>(cache->bytes())));
  out.Set("budget", Napi::Number::New(env, static_cast<double>(cache->budget())));
  return out;
}

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
    const Napi::Value cache = args.Get("pairCache");
    if (!cache.IsUndefined() && !cache.IsNull()) {
      if (device_ != Device::Cpu) throwError(env, code::kInvalidArgument, "pairCache: a host cache, for device 'cpu' only");
      cache_ = unwrapCache(env, cache);
      bank_.componentsA = cuda::Operand::of(cache_->componentsA());
      bank_.componentsB = cuda::Operand::of(cache_->componentsB());
    } else {
      bank_.componentsA = operand(env, args, "componentsA", overlaps);
      bank_.componentsB = operand(env, args, "componentsB", overlaps);
    }
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
    if (!args.Get("ranks").IsUndefined() && !args.Get("ranks").IsNull()) {
      ranks_ = readInt32(env, args, "ranks", static_cast<size_t>(bank_.count), keep, overlaps);
    }
    bias_ = readVector(env, args, "bias", static_cast<size_t>(bank_.componentsB.rows()), true, false, keep, overlaps);
    y_ = readOutMatrix(env, args, "y", keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] { checkEigenBankApply(x_.shape(), hostBank(), rows_, weight_.shape(), y_); });
  }

 protected:
  void run() override {
    runOn([&] { eigenBankApply(x_.host, hostBank(), rows_, weight_.host, bias_, y_, cache_.get()); },
          [&](cuda::Plugin& p) { return p.eigenBankApply(x_, bank_, rows_, weight_, bias_, y_); });
  }

 private:
  EigenAdapterBank hostBank() const {
    EigenAdapterBank b = cuda::coreBank(bank_);
    b.ranks = ranks_;
    return b;
  }

  cuda::EigenBankOperands bank_;
  const int32_t* ranks_ = nullptr;  // the CPU's path choice only
  std::shared_ptr<PairCache> cache_;
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
  exports.Set("createPairCache", Napi::Function::New(env, createPairCache, "createPairCache"));
  exports.Set("pairCacheStats", Napi::Function::New(env, pairCacheStats, "pairCacheStats"));
  exportJob<LoraBankJob>(env, exports, "loraBankApply");
}

}  // namespace eigenlorax::addon
