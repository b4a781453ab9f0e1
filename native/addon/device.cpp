// The CUDA plugin's loading, the device matrix handles, and DeviceJob (device.h).
#include "device.h"
#include "shared_external.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

namespace eigenlorax::addon {
namespace {

struct PluginState {
  std::once_flag once;
  cuda::Plugin* plugin = nullptr;
  std::string path;
  std::string why;
};

PluginState& pluginState() {
  static PluginState s;
  return s;
}

std::string pluginPath() {
  if (const char* path = std::getenv("EIGENLORAX_CUDA_PLUGIN"); path != nullptr && *path != '\0') return path;
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&pluginPath), &info) == 0 || info.dli_fname == nullptr) return "eigenlorax_cuda.so";
  std::string self = info.dli_fname;
  const size_t slash = self.rfind('/');
  return (slash == std::string::npos ? std::string() : self.substr(0, slash + 1)) + "eigenlorax_cuda.so";
}

void loadPlugin(PluginState& s) {
  s.path = pluginPath();
  void* library = dlopen(s.path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    const char* error = dlerror();
    s.why = "this build has no CUDA backend: " + (error != nullptr ? std::string(error) : s.path) +
            " (the plugin is built when nvcc is found at install time; EIGENLORAX_CUDA_PLUGIN names another file)";
    return;
  }
  auto entry = reinterpret_cast<cuda::PluginEntry>(dlsym(library, cuda::kPluginSymbol));
  s.plugin = entry != nullptr ? entry(cuda::kPluginAbi) : nullptr;
  if (s.plugin == nullptr) {
    s.why = s.path + " is not a CUDA plugin of this version of eigenlorax (interface " +
            std::to_string(cuda::kPluginAbi) + ")";
    dlclose(library);
  }
}

// The plugin's codes, as the static strings CoreError keeps.
const char* knownCode(const std::string& c) {
  for (const char* known : {code::kInvalidArgument, code::kShapeMismatch, code::kNonFinite, code::kOutOfMemory,
                            cuda::code::kUnavailable, cuda::code::kDevice}) {
    if (c == known) return known;
  }
  return code::kInternal;
}

}  // namespace

cuda::Plugin* cudaPlugin(std::string* why, std::string* path) {
  PluginState& s = pluginState();
  std::call_once(s.once, [&s] { loadPlugin(s); });
  if (s.plugin == nullptr && why != nullptr) *why = s.why;
  if (path != nullptr) *path = s.path;
  return s.plugin;
}

void raise(const cuda::Status& status) {
  if (!status.ok()) throw CoreError(knownCode(status.code), status.message);
}

void DeviceHandle::freeIfUnused() {
  if (disposed && uses == 0 && matrix.data != nullptr) cudaPlugin()->release(matrix);
}

DeviceHandle::~DeviceHandle() {
  disposed = true;
  uses = 0;
  freeIfUnused();
}

Napi::Value wrapHandle(Napi::Env env, const cuda::DeviceMatrix& m) {
  auto handle = std::make_shared<DeviceHandle>();
  handle->matrix = m;
  return SharedExternal<DeviceHandle>::wrap(env, std::move(handle));
}

std::shared_ptr<DeviceHandle> findHandle(const Napi::Value& value) {
  return SharedExternal<DeviceHandle>::find(value);
}

std::shared_ptr<DeviceHandle> unwrapHandle(Napi::Env env, const Napi::Value& value, const std::string& name) {
  std::shared_ptr<DeviceHandle> h = findHandle(value);
  if (!h) badArgument(env, name + ".handle", "a device matrix handle", value);
  if (h->disposed) throwError(env, code::kInvalidArgument, name + ": the device matrix was disposed of");
  return h;
}

DeviceJob::~DeviceJob() {
  for (auto& h : used_) {
    --h->uses;
    h->freeIfUnused();
  }
}

Napi::Object DeviceJob::begin(const Napi::CallbackInfo& info, bool cudaOnly) {
  Napi::Env env = info.Env();
  const Napi::Object args = requireObject(env, info[0], "arguments");
  if (cudaOnly) device_ = Device::Cuda;
  else if (!args.Get("device").IsUndefined()) device_ = static_cast<Device>(readChoice(env, args, "device", {"cpu", "cuda"}));
  if (device_ == Device::Cuda) {
    std::string why;
    plugin_ = cudaPlugin(&why);
    if (plugin_ == nullptr) throwError(env, cuda::code::kUnavailable, "CUDA is not available: " + why);
  }
  return args;
}

cuda::Operand DeviceJob::operandValue(Napi::Env env, const Napi::Value& value, const std::string& name,
                                      Overlaps& overlaps) {
  if (value.IsObject()) {
    const Napi::Object o = value.As<Napi::Object>();
    if (o.Has("handle")) {
      if (device_ != Device::Cuda) {
        throwError(env, code::kInvalidArgument, name + ": a device matrix needs device 'cuda' (call toHost() first)");
      }
      std::shared_ptr<DeviceHandle> h = unwrapHandle(env, o.Get("handle"), name);
      ++h->uses;
      used_.push_back(h);
      keep.add(value);
      return cuda::Operand::of(h->matrix);
    }
  }
  return cuda::Operand::of(readMatrixValue(env, value, name, keep, overlaps));
}

cuda::Operand DeviceJob::optionalOperand(Napi::Env env, const Napi::Object& args, const char* name,
                                         Overlaps& overlaps) {
  const Napi::Value v = args.Get(name);
  return v.IsNull() || v.IsUndefined() ? cuda::Operand{} : operandValue(env, v, name, overlaps);
}

}  // namespace eigenlorax::addon
