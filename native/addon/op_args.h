// Arguments that several jobs read alike.
#pragma once
#include <string>

#include "../core/linalg.h"
#include "../core/subspace.h"
#include "args.h"

namespace eigenlorax::addon {

inline constexpr int64_t kMaxSafeInteger = 9007199254740991LL;  // Number.MAX_SAFE_INTEGER

// rsvd's options: rank, oversample, powerIters, seed, method.
inline RsvdOptions readRsvdOptions(Napi::Env env, const Napi::Object& args) {
  RsvdOptions o;
  o.rank = readInteger(env, args, "rank", 1, kMaxSafeInteger);
  o.oversample = readInteger(env, args, "oversample", 0, kMaxSafeInteger);
  o.powerIters = static_cast<int>(readInteger(env, args, "powerIters", 0, 1000));
  o.seed = static_cast<uint64_t>(readInteger(env, args, "seed", 0, kMaxSafeInteger));
  o.method = static_cast<SvdMethod>(readChoice(env, args, "method", {"auto", "exact", "randomized"}));
  return o;
}

// rsvd's outputs U (rows x k), S (k), V (cols x k).
struct RsvdOutputs {
  MatView u, v;
  float* s = nullptr;
};

inline RsvdOutputs readRsvdOutputs(Napi::Env env, const Napi::Object& args, Index rank, Keep& keep,
                                   Overlaps& overlaps) {
  RsvdOutputs out;
  out.u = readOutMatrix(env, args, "U", keep, overlaps);
  out.v = readOutMatrix(env, args, "V", keep, overlaps);
  out.s = const_cast<float*>(readVector(env, args, "S", static_cast<size_t>(rank), false, true, keep, overlaps));
  return out;
}

inline Napi::Value rsvdResult(Napi::Env env, const RsvdInfo& info) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("exact", Napi::Boolean::New(env, info.exact));
  out.Set("sketchSize", Napi::Number::New(env, static_cast<double>(info.sketchSize)));
  return out;
}

inline Stacking readStacking(Napi::Env env, const Napi::Object& args) {
  return static_cast<Stacking>(readChoice(env, args, "stacking", {"raw", "canonical"}));
}
inline Weighting readWeighting(Napi::Env env, const Napi::Object& args) {
  return static_cast<Weighting>(readChoice(env, args, "weighting", {"equal", "scale"}));
}

// `adapters`: [{ A, B, scale }, ...]; calls read(A, B, scale, "adapters[i]") for each.
template <typename Read>
void readFactorPairs(Napi::Env env, const Napi::Object& args, Read&& read) {
  const Napi::Array list = readArray(env, args, "adapters");
  for (uint32_t i = 0; i < list.Length(); ++i) {
    const std::string name = "adapters[" + std::to_string(i) + "]";
    const Napi::Value item = list.Get(i);
    if (!item.IsObject()) badArgument(env, name, "an object { A, B, scale }", item);
    const Napi::Object o = item.As<Napi::Object>();
    const float scale = static_cast<float>(readScaleValue(env, o.Get("scale"), name + ".scale"));
    read(o.Get("A"), o.Get("B"), scale, name);
  }
}

}  // namespace eigenlorax::addon
