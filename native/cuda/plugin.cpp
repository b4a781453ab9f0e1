// The loadable CUDA plugin: the backend (backend.h) behind the Plugin interface.
#include "plugin.h"

#include <new>

namespace eigenlorax::cuda {
namespace {

template <typename Fn>
Status guard(Fn fn) noexcept {
  try {
    fn();
    return {};
  } catch (const CoreError& e) {
    return {e.code(), e.what()};
  } catch (const std::bad_alloc&) {
    return {eigenlorax::code::kOutOfMemory, "out of host memory"};
  } catch (const std::exception& e) {
    return {eigenlorax::code::kInternal, e.what()};
  } catch (...) {
    return {eigenlorax::code::kInternal, "unknown error in the CUDA backend"};
  }
}

class CudaPlugin final : public Plugin {
 public:
  Availability probe() noexcept override {
    try {
      return cuda::probe();
    } catch (...) {
      Availability a;
      a.reason = "the CUDA backend failed while probing";
      return a;
    }
  }
  Status allocate(int64_t rows, int64_t cols, DType dtype, const void* hostBytes, DeviceMatrix& out) noexcept override {
    return guard([&] {
      DeviceMatrix m = cuda::allocate(rows, cols, dtype);
      try {
        cuda::upload(m, hostBytes);
      } catch (...) {
        cuda::release(m);
        throw;
      }
      out = m;
    });
  }
  Status download(const DeviceMatrix& m, float* host) noexcept override {
    return guard([&] { cuda::download(m, host); });
  }
  void release(DeviceMatrix& m) noexcept override { cuda::release(m); }
  uint64_t workspaceBytes() noexcept override { return cuda::workspaceBytes(); }
  Status rsvd(Operand a, const RsvdOptions& o, MatView u, float* s, MatView v, RsvdInfo& info) noexcept override {
    return guard([&] { info = cuda::rsvd(a, o, u, s, v); });
  }
  Status loraForward(Operand x, const LoraOperands& l, MatView y) noexcept override {
    return guard([&] { cuda::loraForward(x, l, y); });
  }
  Status loraBackward(Operand x, Operand dy, const LoraOperands& l, MatView dx, MatView dA,
                      MatView dB) noexcept override {
    return guard([&] { cuda::loraBackward(x, dy, l, dx, dA, dB); });
  }
  Status eigenLoraForward(Operand x, const EigenLoraOperands& l, MatView y) noexcept override {
    return guard([&] { cuda::eigenLoraForward(x, l, y); });
  }
  Status eigenLoraBackward(Operand x, Operand dy, const EigenLoraOperands& l, MatView dx, MatView dAlpha,
                           MatView dBeta) noexcept override {
    return guard([&] { cuda::eigenLoraBackward(x, dy, l, dx, dAlpha, dBeta); });
  }
  Status eigenBankApply(Operand x, const EigenBankOperands& bank, const int32_t* rows, Operand weight,
                        const float* bias, MatView y) noexcept override {
    return guard([&] { cuda::eigenBankApply(x, bank, rows, weight, bias, y); });
  }
  Status loraBankApply(Operand x, const LoraBankOperands& bank, const int32_t* rows, Operand weight,
                       const float* bias, MatView y) noexcept override {
    return guard([&] { cuda::loraBankApply(x, bank, rows, weight, bias, y); });
  }
};

}  // namespace
}  // namespace eigenlorax::cuda

extern "C" __attribute__((visibility("default"))) eigenlorax::cuda::Plugin* eigenlorax_cuda_plugin(int abi) {
  static eigenlorax::cuda::CudaPlugin plugin;
  return abi == eigenlorax::cuda::kPluginAbi ? &plugin : nullptr;
}
