// The boundary between the Node addon and the CUDA plugin (eigenlorax_cuda.so), which the
// addon loads with dlopen only when a GPU is asked for. The plugin exports one C symbol,
// `eigenlorax_cuda_plugin`, returning this interface; no exception crosses it: every
// call returns a Status (empty code = success) built from the backend's CoreError.
// Bump kPluginAbi whenever this interface changes: the addon refuses a plugin of another
// version with a clear message instead of calling into a different layout.
#pragma once
#include <string>

#include "backend.h"

namespace eigenlorax::cuda {

inline constexpr int kPluginAbi = 1;
inline constexpr const char* kPluginSymbol = "eigenlorax_cuda_plugin";

struct Status {
  std::string code;
  std::string message;
  bool ok() const { return code.empty(); }
};

class Plugin {
 public:
  virtual ~Plugin() = default;
  virtual Availability probe() noexcept = 0;
  virtual Status allocate(int64_t rows, int64_t cols, DType dtype, const void* hostBytes, DeviceMatrix& out) noexcept = 0;
  virtual Status download(const DeviceMatrix& m, float* host) noexcept = 0;
  virtual void release(DeviceMatrix& m) noexcept = 0;
  virtual uint64_t workspaceBytes() noexcept = 0;
  virtual Status rsvd(Operand a, const RsvdOptions& options, MatView u, float* s, MatView v, RsvdInfo& info) noexcept = 0;
  virtual Status loraForward(Operand x, const LoraOperands& layer, MatView y) noexcept = 0;
  virtual Status loraBackward(Operand x, Operand dy, const LoraOperands& layer, MatView dx, MatView dA,
                              MatView dB) noexcept = 0;
  virtual Status eigenLoraForward(Operand x, const EigenLoraOperands& layer, MatView y) noexcept = 0;
  virtual Status eigenLoraBackward(Operand x, Operand dy, const EigenLoraOperands& layer, MatView dx, MatView dAlpha,
                                   MatView dBeta) noexcept = 0;
  virtual Status eigenBankApply(Operand x, const EigenBankOperands& bank, const int32_t* rowAdapter, Operand weight,
                                const float* bias, MatView y) noexcept = 0;
  virtual Status loraBankApply(Operand x, const LoraBankOperands& bank, const int32_t* rowAdapter, Operand weight,
                               const float* bias, MatView y) noexcept = 0;
};

// The plugin's entry point: null when `abi` is not kPluginAbi.
using PluginEntry = Plugin* (*)(int abi);

}  // namespace eigenlorax::cuda
