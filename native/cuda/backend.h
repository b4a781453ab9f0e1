// The CUDA backend: the same operations as native/core, on an NVIDIA GPU through cuBLAS
// (loaded at run time, see cublas.h) and a few kernels of our own (kernels.cu).
//
// Inputs are Operands: a host f32 view (copied to the device for the call) or a
// DeviceMatrix the caller keeps on the device between calls (f32, or f16/bf16 storage
// widened to f32 on the device before use, so every product accumulates in f32).
// Outputs are host f32 views. Every function checks shapes before touching memory and
// throws CoreError (ERR_DEVICE_UNAVAILABLE, ERR_DEVICE, ERR_OUT_OF_MEMORY, shape codes);
// nothing aborts. All work runs on one stream of device 0 and ends synchronised.
//
// This header is shared by the loadable plugin (plugin.cpp), the parity test and the
// benchmark executables; the Node addon reaches it only through plugin.h.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "../core/linalg.h"
#include "../core/lowrank.h"
#include "../core/matrix.h"
#include "../core/multiadapter.h"

namespace eigenlorax::cuda {

namespace code {
inline constexpr const char* kUnavailable = "ERR_DEVICE_UNAVAILABLE";
inline constexpr const char* kDevice = "ERR_DEVICE";
}  // namespace code

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };
inline size_t dtypeSize(DType dtype) { return dtype == DType::F32 ? 4 : 2; }
inline const char* dtypeName(DType dtype) {
  return dtype == DType::F32 ? "f32" : dtype == DType::F16 ? "f16" : "bf16";
}

// Row-major rows x cols on device 0, allocated with cudaMalloc (never managed memory).
struct DeviceMatrix {
  void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  DType dtype = DType::F32;
  size_t bytes() const { return static_cast<size_t>(rows) * static_cast<size_t>(cols) * dtypeSize(dtype); }
};

struct Operand {
  ConstMatView host;                     // f32 on the host, or
  const DeviceMatrix* device = nullptr;  // on the device
  static Operand of(ConstMatView v) { return {v, nullptr}; }
  static Operand of(const DeviceMatrix& d) { return {{}, &d}; }
  bool empty() const { return device == nullptr && host.empty(); }
  int64_t rows() const { return device != nullptr ? device->rows : host.rows; }
  int64_t cols() const { return device != nullptr ? device->cols : host.cols; }
  // For the core's shape checks, which look at emptiness and shapes only: any non-null
  // pointer stands for a device matrix.
  ConstMatView shape() const {
    if (device == nullptr) return host;
    return {device->data != nullptr ? static_cast<const float*>(device->data) : reinterpret_cast<const float*>(this),
            device->rows, device->cols};
  }
};

struct DeviceInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;  // compute capability
  uint64_t totalBytes = 0, freeBytes = 0;
  int multiprocessors = 0;
};

struct Availability {
  bool available = false;
  std::string reason;  // why not, when not available
  int runtimeVersion = 0;
  int driverVersion = 0;
  int cublasVersion = 0;
  std::string cublasLibrary;  // the file that was loaded
  std::vector<DeviceInfo> devices;
};

// Never throws: what is there and, if the backend cannot run, why.
Availability probe();

// Device memory. `upload` copies host bytes already in the matrix's dtype.
DeviceMatrix allocate(int64_t rows, int64_t cols, DType dtype);
void upload(const DeviceMatrix& m, const void* hostBytes);
// Into host f32 (rows x cols), widening f16/bf16.
void download(const DeviceMatrix& m, float* host);
void release(DeviceMatrix& m) noexcept;
// Bytes the backend holds for its own scratch (reported by `eigenlorax devices`).
uint64_t workspaceBytes();

// Randomized SVD as core::rsvd: the same Gaussian test matrix (the CPU's seeded streams,
// drawn on the device), cuBLAS products, shifted CholeskyQR3 in double for every
// orthonormalisation, the small l x l SVD on the host. The exact path (small matrices)
// runs on the host, as on the CPU.
RsvdInfo rsvd(Operand a, const RsvdOptions& options, MatView u, float* s, MatView v);

struct LoraOperands {
  Operand a, b;             // A: r x d_in, B: d_out x r
  float scale = 1.0f;
  Operand weight;           // optional W: d_out x d_in
  const float* bias = nullptr;  // optional, host, d_out
};
struct EigenLoraOperands {
  Operand componentsA;      // V_A: d_in x K_A
  Operand alpha;            // K_A x r
  Operand beta;             // K_B x r
  Operand componentsB;      // U_B: d_out x K_B
  float scale = 1.0f;
  Operand weight;
  const float* bias = nullptr;
};

void loraForward(Operand x, const LoraOperands& layer, MatView y);
void loraBackward(Operand x, Operand dy, const LoraOperands& layer, MatView dx, MatView dA, MatView dB);
// Always the `Project` order (x V_A first); returns it.
ProductOrder eigenLoraForward(Operand x, const EigenLoraOperands& layer, MatView y);
ProductOrder eigenLoraBackward(Operand x, Operand dy, const EigenLoraOperands& layer, MatView dx, MatView dAlpha,
                               MatView dBeta);

struct EigenBankOperands {
  Operand componentsA;  // V_A: d_in x K_A
  Operand componentsB;  // U_B: d_out x K_B
  Operand mixing;       // (count K_A) x K_B: M_0 on top of M_1 ...
  int64_t count = 0;
};
struct LoraBankOperands {
  std::vector<Operand> a;  // A_i: r_i x d_in
  std::vector<Operand> b;  // B_i: d_out x r_i
  std::vector<float> scales;
};
// y = x W^T + b + each row's adapter; rowAdapter (host, n entries) in [-1, count).
// The operands as the core's types: for the core's shape checks, which read only shapes
// and emptiness (a device operand stands in by a non-null pointer, Operand::shape), and,
// when every operand is on the host, for the CPU backend itself.
inline LoraLayer coreLayer(const LoraOperands& l) {
  return {l.a.shape(), l.b.shape(), l.scale, l.weight.shape(), l.bias};
}
inline EigenLoraLayer coreLayer(const EigenLoraOperands& l) {
  return {l.componentsA.shape(), l.alpha.shape(), l.beta.shape(), l.componentsB.shape(), l.scale, l.weight.shape(), l.bias};
}
// Checks the mixing matrix's shape ((count K_A) x K_B) on the way.
inline EigenAdapterBank coreBank(const EigenBankOperands& b) {
  requireShape("mixing", b.mixing.rows(), b.mixing.cols(), b.count * b.componentsA.cols(), b.componentsB.cols());
  return {b.componentsA.shape(), b.componentsB.shape(), b.mixing.shape().data, b.count};
}
inline LoraBank coreBank(const LoraBankOperands& b) {
  LoraBank out;
  for (const Operand& a : b.a) out.a.push_back(a.shape());
  for (const Operand& m : b.b) out.b.push_back(m.shape());
  out.scales = b.scales;
  return out;
}

void eigenBankApply(Operand x, const EigenBankOperands& bank, const int32_t* rowAdapter, Operand weight,
                    const float* bias, MatView y);
void loraBankApply(Operand x, const LoraBankOperands& bank, const int32_t* rowAdapter, Operand weight,
                   const float* bias, MatView y);

}  // namespace eigenlorax::cuda
