// Which backend runs a job, and the operands it reads. Every operation that runs on both
// backends is one job taking `device: 'cpu' | 'cuda'` (default 'cpu'): CPU = native/core,
// CUDA = the plugin (native/cuda, eigenlorax_cuda.so), loaded with dlopen on first use
// from beside this addon or $EIGENLORAX_CUDA_PLUGIN. Without it a 'cuda' call fails with
// ERR_DEVICE_UNAVAILABLE and the reason, and the rest of the addon is unaffected.
//
// Device matrices are Externals registered in a table (so a foreign External is never
// taken for one). A matrix is freed when it is disposed of, or collected, and no queued
// job still uses it: jobs count their uses on the JS thread when they are created and
// when they end.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "../cuda/plugin.h"
#include "job.h"

namespace eigenlorax::addon {

enum class Device { Cpu, Cuda };

// The plugin, or null with the reason (`why`) and the file looked for (`path`).
cuda::Plugin* cudaPlugin(std::string* why = nullptr, std::string* path = nullptr);
// A failed plugin call, as the CoreError the job reports.
void raise(const cuda::Status& status);

struct DeviceHandle {
  cuda::DeviceMatrix matrix;
  bool disposed = false;
  int uses = 0;  // queued jobs using it
  void freeIfUnused();
  ~DeviceHandle();
};

// A new handle owning `m` (freed with it), and the one a value names (or ERR_INVALID_ARGUMENT).
Napi::Value wrapHandle(Napi::Env env, const cuda::DeviceMatrix& m);
std::shared_ptr<DeviceHandle> unwrapHandle(Napi::Env env, const Napi::Value& value, const std::string& name);
// The live handle a value names, or null (dispose: a foreign value is refused by the caller).
std::shared_ptr<DeviceHandle> findHandle(const Napi::Value& value);

// A job whose inputs may be host matrices or, on the CUDA backend, device matrices: it
// counts itself as a user of each device matrix while queued.
class DeviceJob : public Job {
 public:
  using Job::Job;
  ~DeviceJob() override;

 protected:
  Device device_ = Device::Cpu;
  cuda::Plugin* plugin_ = nullptr;

  // Device operands are not in `keep`, so "every input finite" is known only without them.
  bool finiteResult() const override { return used_.empty(); }
  // The CPU backend's multiply-adds (small jobs run inline); CUDA jobs are always queued.
  double work() const override { return device_ == Device::Cuda ? Job::work() : hostWork(); }
  virtual double hostWork() const { return Job::work(); }

  // Every job starts here: the arguments object, its `device` (`cudaOnly`: none read, the
  // job is CUDA's own), and for 'cuda' the plugin (or ERR_DEVICE_UNAVAILABLE).
  Napi::Object begin(const Napi::CallbackInfo& info, bool cudaOnly = false);
  // The job with the `plugin` when on the GPU, else `cpu()` (native/core).
  template <typename Cpu, typename Gpu>
  void runOn(Cpu cpu, Gpu gpu) {
    if (device_ == Device::Cuda) raise(gpu(*plugin_));
    else cpu();
  }

  // { rows, cols, data } on the host, or { rows, cols, handle } on the device ('cuda' only).
  cuda::Operand operandValue(Napi::Env env, const Napi::Value& value, const std::string& name, Overlaps& overlaps);
  cuda::Operand operand(Napi::Env env, const Napi::Object& args, const char* name, Overlaps& overlaps) {
    return operandValue(env, args.Get(name), name, overlaps);
  }
  cuda::Operand optionalOperand(Napi::Env env, const Napi::Object& args, const char* name, Overlaps& overlaps);

 private:
  std::vector<std::shared_ptr<DeviceHandle>> used_;
};

}  // namespace eigenlorax::addon
