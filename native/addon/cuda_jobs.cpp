// The CUDA backend behind the async boundary. The plugin (native/cuda, eigenlorax_cuda.so)
// is loaded with dlopen on first use, from beside this addon or $EIGENLORAX_CUDA_PLUGIN;
// without it every cuda* call fails with ERR_DEVICE_UNAVAILABLE and the reason, and the
// rest of the addon is unaffected.
//
// Device matrices are Externals registered in a table (so a foreign External is never
// taken for one). A matrix is freed when it is disposed of, or collected, and no queued
// job still uses it: jobs count their uses on the JS thread when they are created and
// when they end.
#include <dlfcn.h>

#include <memory>
#include <mutex>
#include <unordered_set>

#include "../core/multiadapter.h"
#include "../cuda/plugin.h"
#include "job.h"
#include "op_args.h"

namespace eigenlorax::addon {
namespace {

using cuda::DeviceMatrix;
using cuda::Operand;
using cuda::Plugin;

struct PluginState {
  std::once_flag once;
  Plugin* plugin = nullptr;
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

// The plugin, or null with the reason.
Plugin* plugin(std::string* why = nullptr) {
  PluginState& s = pluginState();
  std::call_once(s.once, [&s] { loadPlugin(s); });
  if (s.plugin == nullptr && why != nullptr) *why = s.why;
  return s.plugin;
}

Plugin* requirePlugin(Napi::Env env) {
  std::string why;
  Plugin* p = plugin(&why);
  if (p == nullptr) throwError(env, cuda::code::kUnavailable, "CUDA is not available: " + why);
  return p;
}

// The plugin's codes, as the static strings CoreError keeps.
const char* knownCode(const std::string& c) {
  for (const char* known : {code::kInvalidArgument, code::kShapeMismatch, code::kNonFinite, code::kOutOfMemory,
                            cuda::code::kUnavailable, cuda::code::kDevice}) {
    if (c == known) return known;
  }
  return code::kInternal;
}

void raise(const cuda::Status& status) {
  if (!status.ok()) throw CoreError(knownCode(status.code), status.message);
}

// ---- device matrices

struct DeviceHandle {
  DeviceMatrix matrix;
  bool disposed = false;
  int uses = 0;  // queued jobs using it
  void freeIfUnused() {
    if (disposed && uses == 0 && matrix.data != nullptr) plugin()->release(matrix);
  }
  ~DeviceHandle() {
    disposed = true;
    uses = 0;
    freeIfUnused();
  }
};

struct HandleBox {
  std::shared_ptr<DeviceHandle> handle;
};

std::mutex registryMutex;
std::unordered_set<const HandleBox*> registry;

Napi::Value wrapHandle(Napi::Env env, const DeviceMatrix& m) {
  auto* box = new HandleBox{std::make_shared<DeviceHandle>()};
  box->handle->matrix = m;
  {
    std::lock_guard<std::mutex> lock(registryMutex);
    registry.insert(box);
  }
  return Napi::External<HandleBox>::New(env, box, [](Napi::Env, HandleBox* b) {
    {
      std::lock_guard<std::mutex> lock(registryMutex);
      registry.erase(b);
    }
    delete b;
  });
}

std::shared_ptr<DeviceHandle> unwrapHandle(Napi::Env env, const Napi::Value& value, const std::string& name) {
  if (value.IsExternal()) {
    const HandleBox* box = value.As<Napi::External<HandleBox>>().Data();
    std::lock_guard<std::mutex> lock(registryMutex);
    if (registry.count(box) != 0) {
      if (box->handle->disposed) throwError(env, code::kInvalidArgument, name + ": the device matrix was disposed of");
      return box->handle;
    }
  }
  badArgument(env, name + ".handle", "a device matrix handle", value);
}

// A job that may read device matrices: it counts itself as a user of each while queued.
class CudaJob : public Job {
 public:
  using Job::Job;
  ~CudaJob() override {
    for (auto& h : used_) {
      --h->uses;
      h->freeIfUnused();
    }
  }

 protected:
  Plugin* plugin_ = nullptr;
  // Device operands are not in `keep`, so "every input finite" is known only without them.
  bool finiteResult() const override { return used_.empty(); }

  // Every CUDA job starts here: the plugin (or ERR_DEVICE_UNAVAILABLE), then its arguments.
  Napi::Object begin(const Napi::CallbackInfo& info) {
    plugin_ = requirePlugin(info.Env());
    return requireObject(info.Env(), info[0], "arguments");
  }

  // { rows, cols, data } on the host, or { rows, cols, handle } on the device.
  Operand operandValue(Napi::Env env, const Napi::Value& value, const std::string& name, Overlaps& overlaps) {
    if (value.IsObject()) {
      const Napi::Object o = value.As<Napi::Object>();
      if (o.Has("handle")) {
        std::shared_ptr<DeviceHandle> h = unwrapHandle(env, o.Get("handle"), name);
        ++h->uses;
        used_.push_back(h);
        keep.add(value);
        return Operand::of(h->matrix);
      }
    }
    return Operand::of(readMatrixValue(env, value, name, keep, overlaps));
  }
  Operand operand(Napi::Env env, const Napi::Object& args, const char* name, Overlaps& overlaps) {
    return operandValue(env, args.Get(name), name, overlaps);
  }
  Operand optionalOperand(Napi::Env env, const Napi::Object& args, const char* name, Overlaps& overlaps) {
    const Napi::Value v = args.Get(name);
    return v.IsNull() || v.IsUndefined() ? Operand{} : operandValue(env, v, name, overlaps);
  }

 private:
  std::vector<std::shared_ptr<DeviceHandle>> used_;
};

// ---- jobs

class ProbeJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo&) {}

 protected:
  void run() override {
    Plugin* p = plugin(&why_);
    if (p == nullptr) return;
    availability_ = p->probe();
    workspace_ = p->workspaceBytes();
  }
  Napi::Value result(Napi::Env env) override {
    const cuda::Availability& a = availability_;
    Napi::Object out = Napi::Object::New(env);
    out.Set("plugin", pluginState().path);
    out.Set("pluginLoaded", Napi::Boolean::New(env, why_.empty()));
    out.Set("available", Napi::Boolean::New(env, why_.empty() && a.available));
    out.Set("reason", why_.empty() ? a.reason : why_);
    out.Set("runtimeVersion", a.runtimeVersion);
    out.Set("driverVersion", a.driverVersion);
    out.Set("cublasVersion", a.cublasVersion);
    out.Set("cublasLibrary", a.cublasLibrary);
    out.Set("workspaceBytes", static_cast<double>(workspace_));
    Napi::Array devices = Napi::Array::New(env, a.devices.size());
    for (size_t i = 0; i < a.devices.size(); ++i) {
      const cuda::DeviceInfo& d = a.devices[i];
      Napi::Object o = Napi::Object::New(env);
      o.Set("index", d.index);
      o.Set("name", d.name);
      o.Set("computeCapability", std::to_string(d.major) + "." + std::to_string(d.minor));
      o.Set("totalBytes", static_cast<double>(d.totalBytes));
      o.Set("freeBytes", static_cast<double>(d.freeBytes));
      o.Set("multiprocessors", d.multiprocessors);
      devices.Set(static_cast<uint32_t>(i), o);
    }
    out.Set("devices", devices);
    return out;
  }

 private:
  std::string why_;
  cuda::Availability availability_;
  uint64_t workspace_ = 0;
};

class UploadJob : public CudaJob {
 public:
  using CudaJob::CudaJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = begin(info);
    Overlaps overlaps;
    rows_ = readInteger(env, args, "rows", 1, int64_t{1} << 40);
    cols_ = readInteger(env, args, "cols", 1, int64_t{1} << 40);
    dtype_ = static_cast<cuda::DType>(readInteger(env, args, "dtype", 0, 2));
    const Bytes data = readBytes(env, args, "data", false, keep, overlaps);
    const size_t want = static_cast<size_t>(rows_) * static_cast<size_t>(cols_) * cuda::dtypeSize(dtype_);
    if (data.bytes != want) {
      throwError(env, code::kShapeMismatch,
                 "data: expected " + std::to_string(want) + " bytes (" + shapeString(rows_, cols_) + " " +
                     cuda::dtypeName(dtype_) + ") but received " + std::to_string(data.bytes));
    }
    data_ = data.data;
  }

 protected:
  void run() override { raise(plugin_->allocate(rows_, cols_, dtype_, data_, matrix_)); }
  Napi::Value result(Napi::Env env) override { return wrapHandle(env, matrix_); }

 private:
  int64_t rows_ = 0, cols_ = 0;
  cuda::DType dtype_ = cuda::DType::F32;
  const void* data_ = nullptr;
  DeviceMatrix matrix_;
};

class DownloadJob : public CudaJob {
 public:
  using CudaJob::CudaJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = begin(info);
    Overlaps overlaps;
    matrix_ = operand(env, args, "matrix", overlaps);
    if (matrix_.device == nullptr) badArgument(env, "matrix", "a device matrix", args.Get("matrix"));
    out_ = const_cast<float*>(readVector(env, args, "out", static_cast<size_t>(matrix_.rows() * matrix_.cols()), false,
                                         true, keep, overlaps));
  }

 protected:
  void run() override { raise(plugin_->download(*matrix_.device, out_)); }

 private:
  Operand matrix_;
  float* out_ = nullptr;
};

Napi::Value dispose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Napi::Object args = requireObject(env, info[0], "arguments");
  const Napi::Value value = args.Get("handle");
  if (value.IsExternal()) {
    const HandleBox* box = value.As<Napi::External<HandleBox>>().Data();
    std::shared_ptr<DeviceHandle> h;
    {
      std::lock_guard<std::mutex> lock(registryMutex);
      if (registry.count(box) != 0) h = box->handle;
    }
    if (h) {
      h->disposed = true;
      h->freeIfUnused();
      return env.Undefined();
    }
  }
  badArgument(env, "handle", "a device matrix handle", value);
}

class RsvdJob : public CudaJob {
 public:
  using CudaJob::CudaJob;
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
  void run() override { raise(plugin_->rsvd(a_, options_, out_.u, out_.s, out_.v, info_)); }
  Napi::Value result(Napi::Env env) override { return rsvdResult(env, info_); }

 private:
  Operand a_;
  RsvdOptions options_;
  RsvdOutputs out_;
  RsvdInfo info_;
};

class LowRankJob : public CudaJob {
 public:
  using CudaJob::CudaJob;

 protected:
  cuda::LoraOperands readLora(Napi::Env env, const Napi::Object& args, Overlaps& overlaps) {
    cuda::LoraOperands l;
    l.a = operand(env, args, "A", overlaps);
    l.b = operand(env, args, "B", overlaps);
    l.scale = readScale(env, args, "scale");
    l.weight = optionalOperand(env, args, "weight", overlaps);
    l.bias = readVector(env, args, "bias", static_cast<size_t>(l.b.rows()), true, false, keep, overlaps);
    return l;
  }
  cuda::EigenLoraOperands readEigenLora(Napi::Env env, const Napi::Object& args, Overlaps& overlaps) {
    cuda::EigenLoraOperands l;
    l.componentsA = operand(env, args, "componentsA", overlaps);
    l.alpha = operand(env, args, "alpha", overlaps);
    l.beta = operand(env, args, "beta", overlaps);
    l.componentsB = operand(env, args, "componentsB", overlaps);
    l.scale = readScale(env, args, "scale");
    l.weight = optionalOperand(env, args, "weight", overlaps);
    l.bias = readVector(env, args, "bias", static_cast<size_t>(l.componentsB.rows()), true, false, keep, overlaps);
    return l;
  }
  static LoraLayer shape(const cuda::LoraOperands& l) {
    LoraLayer s;
    s.a = l.a.shape();
    s.b = l.b.shape();
    s.weight = l.weight.shape();
    return s;
  }
  static EigenLoraLayer shape(const cuda::EigenLoraOperands& l) {
    EigenLoraLayer s;
    s.componentsA = l.componentsA.shape();
    s.alpha = l.alpha.shape();
    s.beta = l.beta.shape();
    s.componentsB = l.componentsB.shape();
    s.weight = l.weight.shape();
    return s;
  }
};

class LoraForwardJob : public LowRankJob {
 public:
  using LowRankJob::LowRankJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = begin(info);
    Overlaps overlaps;
    x_ = operand(env, args, "x", overlaps);
    layer_ = readLora(env, args, overlaps);
    y_ = readOutMatrix(env, args, "y", keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] { checkLora(x_.shape(), shape(layer_), "y", y_.rows, y_.cols); });
  }

 protected:
  void run() override { raise(plugin_->loraForward(x_, layer_, y_)); }

 private:
  Operand x_;
  cuda::LoraOperands layer_;
  MatView y_;
};

class LoraBackwardJob : public LowRankJob {
 public:
  using LowRankJob::LowRankJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = begin(info);
    Overlaps overlaps;
    x_ = operand(env, args, "x", overlaps);
    dy_ = operand(env, args, "dy", overlaps);
    layer_ = readLora(env, args, overlaps);
    dx_ = readOptionalOutMatrix(env, args, "dx", keep, overlaps);
    dA_ = readOutMatrix(env, args, "dA", keep, overlaps);
    dB_ = readOutMatrix(env, args, "dB", keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] {
      checkLora(x_.shape(), shape(layer_), "dy", dy_.rows(), dy_.cols());
      requireShape("dA", dA_.rows, dA_.cols, layer_.a.rows(), layer_.a.cols());
      requireShape("dB", dB_.rows, dB_.cols, layer_.b.rows(), layer_.b.cols());
      if (!dx_.empty()) requireShape("dx", dx_.rows, dx_.cols, x_.rows(), x_.cols());
    });
  }

 protected:
  void run() override { raise(plugin_->loraBackward(x_, dy_, layer_, dx_, dA_, dB_)); }

 private:
  Operand x_, dy_;
  cuda::LoraOperands layer_;
  MatView dx_, dA_, dB_;
};

class EigenLoraForwardJob : public LowRankJob {
 public:
  using LowRankJob::LowRankJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = begin(info);
    Overlaps overlaps;
    x_ = operand(env, args, "x", overlaps);
    layer_ = readEigenLora(env, args, overlaps);
    y_ = readOutMatrix(env, args, "y", keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] {
      checkEigenLora(x_.shape(), shape(layer_));
      requireShape("y", y_.rows, y_.cols, x_.rows(), layer_.componentsB.rows());
    });
  }

 protected:
  void run() override { raise(plugin_->eigenLoraForward(x_, layer_, y_)); }
  Napi::Value result(Napi::Env env) override { return Napi::String::New(env, "project"); }

 private:
  Operand x_;
  cuda::EigenLoraOperands layer_;
  MatView y_;
};

class EigenLoraBackwardJob : public LowRankJob {
 public:
  using LowRankJob::LowRankJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = begin(info);
    Overlaps overlaps;
    x_ = operand(env, args, "x", overlaps);
    dy_ = operand(env, args, "dy", overlaps);
    layer_ = readEigenLora(env, args, overlaps);
    dx_ = readOptionalOutMatrix(env, args, "dx", keep, overlaps);
    dAlpha_ = readOutMatrix(env, args, "dAlpha", keep, overlaps);
    dBeta_ = readOutMatrix(env, args, "dBeta", keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] {
      checkEigenLora(x_.shape(), shape(layer_));
      requireShape("dy", dy_.rows(), dy_.cols(), x_.rows(), layer_.componentsB.rows());
      requireShape("dAlpha", dAlpha_.rows, dAlpha_.cols, layer_.alpha.rows(), layer_.alpha.cols());
      requireShape("dBeta", dBeta_.rows, dBeta_.cols, layer_.beta.rows(), layer_.beta.cols());
      if (!dx_.empty()) requireShape("dx", dx_.rows, dx_.cols, x_.rows(), x_.cols());
    });
  }

 protected:
  void run() override { raise(plugin_->eigenLoraBackward(x_, dy_, layer_, dx_, dAlpha_, dBeta_)); }
  Napi::Value result(Napi::Env env) override { return Napi::String::New(env, "project"); }

 private:
  Operand x_, dy_;
  cuda::EigenLoraOperands layer_;
  MatView dx_, dAlpha_, dBeta_;
};

class EigenBankJob : public CudaJob {
 public:
  using CudaJob::CudaJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = begin(info);
    Overlaps overlaps;
    x_ = operand(env, args, "x", overlaps);
    bank_.componentsA = operand(env, args, "componentsA", overlaps);
    bank_.componentsB = operand(env, args, "componentsB", overlaps);
    bank_.count = readInteger(env, args, "count", 0, int64_t{1} << 31);
    const int64_t kA = bank_.componentsA.cols(), kB = bank_.componentsB.cols();
    // The CPU call takes the mixing matrices as a flat Float32Array; here they may also be
    // a device matrix of (count K_A) x K_B.
    const Napi::Value mixing = args.Get("mixing");
    if (mixing.IsTypedArray()) {
      const float* data = readVector(env, args, "mixing", static_cast<size_t>(kA * kB * bank_.count), false, false,
                                     keep, overlaps);
      bank_.mixing = Operand::of(ConstMatView{data, bank_.count * kA, kB});
    } else {
      bank_.mixing = operand(env, args, "mixing", overlaps);
    }
    rows_ = readInt32(env, args, "rows", static_cast<size_t>(x_.rows()), keep, overlaps);
    weight_ = optionalOperand(env, args, "weight", overlaps);
    bias_ = readVector(env, args, "bias", static_cast<size_t>(bank_.componentsB.rows()), true, false, keep, overlaps);
    y_ = readOutMatrix(env, args, "y", keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] {
      requireShape("mixing", bank_.mixing.rows(), bank_.mixing.cols(), bank_.count * kA, kB);
      EigenAdapterBank shape;
      shape.componentsA = bank_.componentsA.shape();
      shape.componentsB = bank_.componentsB.shape();
      shape.mixing = bank_.mixing.shape().data;
      shape.count = bank_.count;
      checkEigenBankApply(x_.shape(), shape, rows_, weight_.shape(), y_);
    });
  }

 protected:
  void run() override { raise(plugin_->eigenBankApply(x_, bank_, rows_, weight_, bias_, y_)); }

 private:
  Operand x_, weight_;
  cuda::EigenBankOperands bank_;
  const int32_t* rows_ = nullptr;
  const float* bias_ = nullptr;
  MatView y_;
};

class LoraBankJob : public CudaJob {
 public:
  using CudaJob::CudaJob;
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
    rows_ = readInt32(env, args, "rows", static_cast<size_t>(x_.rows()), keep, overlaps);
    weight_ = optionalOperand(env, args, "weight", overlaps);
    y_ = readOutMatrix(env, args, "y", keep, overlaps);
    bias_ = readVector(env, args, "bias", static_cast<size_t>(y_.cols), true, false, keep, overlaps);
    overlaps.check(env);
    checkNow(env, [&] {
      LoraBank shape;
      for (const Operand& a : bank_.a) shape.a.push_back(a.shape());
      for (const Operand& b : bank_.b) shape.b.push_back(b.shape());
      shape.scales = bank_.scales;
      checkLoraBankApply(x_.shape(), shape, rows_, weight_.shape(), y_);
    });
  }

 protected:
  void run() override { raise(plugin_->loraBankApply(x_, bank_, rows_, weight_, bias_, y_)); }

 private:
  Operand x_, weight_;
  cuda::LoraBankOperands bank_;
  const int32_t* rows_ = nullptr;
  const float* bias_ = nullptr;
  MatView y_;
};

}  // namespace

void registerCuda(Napi::Env env, Napi::Object exports) {
  exportJob<ProbeJob>(env, exports, "cudaProbe");
  exportJob<UploadJob>(env, exports, "cudaUpload");
  exportJob<DownloadJob>(env, exports, "cudaDownload");
  exports.Set("cudaDispose", Napi::Function::New(env, dispose, "cudaDispose"));
  exportJob<RsvdJob>(env, exports, "cudaRsvd");
  exportJob<LoraForwardJob>(env, exports, "cudaLoraForward");
  exportJob<LoraBackwardJob>(env, exports, "cudaLoraBackward");
  exportJob<EigenLoraForwardJob>(env, exports, "cudaEigenLoraForward");
  exportJob<EigenLoraBackwardJob>(env, exports, "cudaEigenLoraBackward");
  exportJob<EigenBankJob>(env, exports, "cudaEigenBankApply");
  exportJob<LoraBankJob>(env, exports, "cudaLoraBankApply");
}

}  // namespace eigenlorax::addon
