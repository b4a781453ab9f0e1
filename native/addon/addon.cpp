// Module entry: registers the functions of each area and the per-environment settings.
#include <napi.h>

#include <Eigen/Core>

#include "../core/errors.h"
#include "../core/large_buffers.h"
#include "../core/threads.h"
#include "args.h"
#include "env.h"
#include "owned_buffers.h"

namespace eigenlorax::addon {

void registerLinalg(Napi::Env env, Napi::Object exports);
void registerLowrank(Napi::Env env, Napi::Object exports);
void registerDtype(Napi::Env env, Napi::Object exports);
void registerHash(Napi::Env env, Napi::Object exports);
void registerSubspace(Napi::Env env, Napi::Object exports);
void registerFolds(Napi::Env env, Napi::Object exports);
void registerMultiAdapter(Napi::Env env, Napi::Object exports);
void registerCuda(Napi::Env env, Napi::Object exports);
void registerTrain(Napi::Env env, Napi::Object exports);

namespace {

#ifndef EIGENLORAX_VERSION
#define EIGENLORAX_VERSION "0.0.0"
#endif

Napi::Value setErrorClass(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) throwError(info.Env(), "ERR_INVALID_ARGUMENT", "setErrorClass: expected a constructor");
  envState(info.Env()).errorClass = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Value setThreads(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object args = Napi::Object::New(env);
  args.Set("threads", info[0]);
  envState(env).threads = static_cast<int>(readInteger(env, args, "threads", 1, 1024));
  return env.Undefined();
}

Napi::Value getThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), envState(info.Env()).threads);
}

Napi::Value buildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("version", EIGENLORAX_VERSION);
  out.Set("eigen", std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) + "." +
                       std::to_string(EIGEN_MINOR_VERSION));
  out.Set("simd", Eigen::SimdInstructionSetsInUse());
  out.Set("openmp", haveOpenMP());
  out.Set("hardwareThreads", hardwareThreads());
  out.Set("backends", [&] {
    Napi::Array a = Napi::Array::New(env, 1);
    a.Set(uint32_t(0), "cpu");
    return a;
  }());
  return out;
}

// ownedBuffer(bytes, zeroed): an ArrayBuffer over memory the addon owns (owned_buffers.h):
// jobs read it without copying, and large ones are in huge pages, which matters for the
// file readers' whole-file buffers: fresh 4 KiB pages cost about 8 us each at their first
// touch on the VMs here, more than reading the file from the page cache.
Napi::Value ownedBufferCall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object args = Napi::Object::New(env);
  args.Set("bytes", info[0]);
  const auto bytes = static_cast<size_t>(readInteger(env, args, "bytes", 0, int64_t{1} << 48));
  return ownedBuffer(env, bytes, info[1].ToBoolean());
}

Napi::Object init(Napi::Env env, Napi::Object exports) {
  tuneProcessAllocator();
  Eigen::initParallel();
  envState(env);
  exports.Set("setErrorClass", Napi::Function::New(env, setErrorClass));
  exports.Set("setThreads", Napi::Function::New(env, setThreads));
  exports.Set("getThreads", Napi::Function::New(env, getThreads));
  exports.Set("buildInfo", Napi::Function::New(env, buildInfo));
  exports.Set("ownedBuffer", Napi::Function::New(env, ownedBufferCall));
  registerLinalg(env, exports);
  registerLowrank(env, exports);
  registerDtype(env, exports);
  registerHash(env, exports);
  registerSubspace(env, exports);
  registerFolds(env, exports);
  registerMultiAdapter(env, exports);
  registerCuda(env, exports);
  registerTrain(env, exports);
  return exports;
}

}  // namespace
}  // namespace eigenlorax::addon

static Napi::Object InitEigenlorax(Napi::Env env, Napi::Object exports) {
  return eigenlorax::addon::init(env, exports);
}

NODE_API_MODULE(eigenlorax, InitEigenlorax)
