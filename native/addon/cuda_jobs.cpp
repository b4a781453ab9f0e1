// CUDA's own calls: the probe and device memory (upload, download, dispose). The
// operations that run on either backend take a `device` (device.h).
#include "device.h"

namespace eigenlorax::addon {
namespace {

using cuda::DeviceMatrix;
using cuda::Operand;

class ProbeJob : public Job {
 public:
  using Job::Job;
  void prepare(const Napi::CallbackInfo&) {}

 protected:
  void run() override {
    cuda::Plugin* p = cudaPlugin(&why_, &path_);
    if (p == nullptr) return;
    availability_ = p->probe();
    workspace_ = p->workspaceBytes();
  }
  Napi::Value result(Napi::Env env) override {
    const cuda::Availability& a = availability_;
    Napi::Object out = Napi::Object::New(env);
    out.Set("plugin", path_);
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
  std::string why_, path_;
  cuda::Availability availability_;
  uint64_t workspace_ = 0;
};

class UploadJob : public DeviceJob {
 public:
  using DeviceJob::DeviceJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = begin(info, true);
    Overlaps overlaps;
    rows_ = readInteger(env, args, "rows", 1, int64_t{1} << 40);
    cols_ = readInteger(env, args, "cols", 1, int64_t{1} << 40);
    dtype_ = static_cast<cuda::DType>(readChoice(env, args, "dtype", {"f32", "f16", "bf16"}));
    const Bytes data = readBytes(env, args, "data", false, keep, overlaps);
    const size_t want = static_cast<size_t>(rows_) * static_cast<size_t>(cols_) * cuda::dtypeSize(dtype_);
    if (data.bytes != want) {
      throwError(env, code::kShapeMismatch,
                 "data: expected " + std::to_string(want) + " bytes (" + shapeString(rows_, cols_) + " " +
                     cuda::dtypeName(dtype_) + "), received " + std::to_string(data.bytes));
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

class DownloadJob : public DeviceJob {
 public:
  using DeviceJob::DeviceJob;
  void prepare(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object args = begin(info, true);
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
  std::shared_ptr<DeviceHandle> h = findHandle(value);
  if (!h) badArgument(env, "handle", "a device matrix handle", value);
  h->disposed = true;
  h->freeIfUnused();
  return env.Undefined();
}

}  // namespace

void registerCuda(Napi::Env env, Napi::Object exports) {
  exportJob<ProbeJob>(env, exports, "cudaProbe");
  exportJob<UploadJob>(env, exports, "cudaUpload");
  exportJob<DownloadJob>(env, exports, "cudaDownload");
  exports.Set("cudaDispose", Napi::Function::New(env, dispose, "cudaDispose"));
}

}  // namespace eigenlorax::addon
