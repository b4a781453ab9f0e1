// The public operations of the CUDA backend: the core's shape checks, uploads of host
// operands, the device work (ops.cpp), downloads of the results.
#include <algorithm>

#include "../core/multiadapter.h"
#include "device.h"

namespace eigenlorax::cuda {
namespace {

const float* biasOnDevice(const float* bias, int64_t dOut, Workspace& ws) {
  return bias == nullptr ? nullptr : uploadArray(bias, dOut, ws);
}

// dx = dy W (or 0 without W), on the device.
void baseBackward(const float* dy, int64_t n, int64_t dOut, int64_t dIn, const float* weight, float* dx) {
  if (weight != nullptr) gemm(false, false, n, dIn, dOut, 1.0f, dy, dOut, weight, dIn, 0.0f, dx, dIn);
  else check(cudaMemsetAsync(dx, 0, static_cast<size_t>(n * dIn) * sizeof(float), context().stream), "cudaMemsetAsync");
}

}  // namespace

RsvdInfo rsvd(Operand a, const RsvdOptions& o, MatView u, float* s, MatView v) {
  checkRsvdArguments(a.shape(), o, u, v);
  const int64_t m = a.rows(), n = a.cols();
  const bool exact = o.method == SvdMethod::Exact ||
                     (o.method == SvdMethod::Auto && rsvdPrefersExact(m, n, o.rank, o.oversample));
  Workspace ws;  // the GPU was asked for: fail here, with the reason, if it cannot run
  if (exact) {
    // Small next to the sketch: the host's exact SVD, as the CPU backend does.
    RsvdOptions hostOptions = o;
    hostOptions.method = SvdMethod::Exact;
    if (a.device == nullptr) return eigenlorax::rsvd(a.host, hostOptions, u, s, v);
    RowMatF host(m, n);
    copyToHost(deviceF32(a, ws, "matrix"), m * n, host.data());
    return eigenlorax::rsvd({host.data(), m, n}, hostOptions, u, s, v);
  }
  return dev::rsvd(deviceF32(a, ws, "matrix"), m, n, o, u, s, v, ws);
}

void loraForward(Operand x, const LoraOperands& l, MatView y) {
  checkLoraForward(x.shape(), coreLayer(l), y.view());
  const int64_t n = x.rows(), dIn = x.cols(), r = l.a.rows(), dOut = l.b.rows();
  Workspace ws;
  float* out = ws.take<float>(n * dOut);
  dev::loraForward(deviceF32(x, ws, "x"), n, dIn, dOut, deviceF32(l.a, ws, "A"), deviceF32(l.b, ws, "B"), r, l.scale,
                   deviceF32Optional(l.weight, ws, "weight"), biasOnDevice(l.bias, dOut, ws), out, ws);
  copyToHost(out, n * dOut, y.data);
}

void loraBackward(Operand x, Operand dy, const LoraOperands& l, MatView dx, MatView dA, MatView dB) {
  checkLoraBackward(x.shape(), dy.shape(), coreLayer(l), dx.view(), dA.view(), dB.view());
  const int64_t n = x.rows(), dIn = x.cols(), r = l.a.rows(), dOut = l.b.rows();
  Workspace ws;
  const float* xd = deviceF32(x, ws, "x");
  const float* dyd = deviceF32(dy, ws, "dy");
  const float* a = deviceF32(l.a, ws, "A");
  const float* b = deviceF32(l.b, ws, "B");
  float* t = ws.take<float>(n * r);
  float* g = ws.take<float>(n * r);
  float* dAd = ws.take<float>(r * dIn);
  float* dBd = ws.take<float>(dOut * r);
  gemm(false, true, n, r, dIn, 1.0f, xd, dIn, a, dIn, 0.0f, t, r);          // t = x A^T
  gemm(false, false, n, r, dOut, l.scale, dyd, dOut, b, r, 0.0f, g, r);     // g = s dy B
  gemm(true, false, dOut, r, n, l.scale, dyd, dOut, t, r, 0.0f, dBd, r);    // dB = s dy^T t
  gemm(true, false, r, dIn, n, 1.0f, g, r, xd, dIn, 0.0f, dAd, dIn);        // dA = g^T x
  if (!dx.empty()) {
    float* dxd = ws.take<float>(n * dIn);
    baseBackward(dyd, n, dOut, dIn, deviceF32Optional(l.weight, ws, "weight"), dxd);
    gemm(false, false, n, dIn, r, 1.0f, g, r, a, dIn, 1.0f, dxd, dIn);      // dx += g A
    copyToHost(dxd, n * dIn, dx.data);
  }
  copyToHost(dAd, r * dIn, dA.data);
  copyToHost(dBd, dOut * r, dB.data);
}

ProductOrder eigenLoraForward(Operand x, const EigenLoraOperands& l, MatView y) {
  checkEigenLoraForward(x.shape(), coreLayer(l), y.view());
  const int64_t n = x.rows(), dIn = x.cols(), kA = l.componentsA.cols(), kB = l.componentsB.cols();
  const int64_t r = l.alpha.cols(), dOut = l.componentsB.rows();
  Workspace ws;
  float* out = ws.take<float>(n * dOut);
  dev::eigenLoraForward(deviceF32(x, ws, "x"), n, dIn, dOut, deviceF32(l.componentsA, ws, "componentsA"), kA,
                        deviceF32(l.alpha, ws, "alpha"), deviceF32(l.beta, ws, "beta"), r,
                        deviceF32(l.componentsB, ws, "componentsB"), kB, l.scale,
                        deviceF32Optional(l.weight, ws, "weight"), biasOnDevice(l.bias, dOut, ws), out, ws);
  copyToHost(out, n * dOut, y.data);
  return ProductOrder::Project;
}

ProductOrder eigenLoraBackward(Operand x, Operand dy, const EigenLoraOperands& l, MatView dx, MatView dAlpha,
                               MatView dBeta) {
  checkEigenLoraBackward(x.shape(), dy.shape(), coreLayer(l), dx.view(), dAlpha.view(), dBeta.view());
  const int64_t n = x.rows(), dIn = x.cols(), kA = l.componentsA.cols(), kB = l.componentsB.cols();
  const int64_t r = l.alpha.cols(), dOut = l.componentsB.rows();
  Workspace ws;
  const float* xd = deviceF32(x, ws, "x");
  const float* dyd = deviceF32(dy, ws, "dy");
  const float* va = deviceF32(l.componentsA, ws, "componentsA");
  const float* ub = deviceF32(l.componentsB, ws, "componentsB");
  const float* alpha = deviceF32(l.alpha, ws, "alpha");
  const float* beta = deviceF32(l.beta, ws, "beta");
  float* u = ws.take<float>(n * kA);
  float* h = ws.take<float>(n * r);
  float* gB = ws.take<float>(n * kB);
  float* gh = ws.take<float>(n * r);
  float* dAlphaD = ws.take<float>(kA * r);
  float* dBetaD = ws.take<float>(kB * r);
  gemm(false, false, n, kA, dIn, 1.0f, xd, dIn, va, kA, 0.0f, u, kA);        // u = x V_A
  gemm(false, false, n, r, kA, 1.0f, u, kA, alpha, r, 0.0f, h, r);           // h = u alpha
  gemm(false, false, n, kB, dOut, 1.0f, dyd, dOut, ub, kB, 0.0f, gB, kB);    // gB = dy U_B
  gemm(true, false, kB, r, n, l.scale, gB, kB, h, r, 0.0f, dBetaD, r);       // dBeta = s gB^T h
  gemm(false, false, n, r, kB, l.scale, gB, kB, beta, r, 0.0f, gh, r);       // gh = s gB beta
  gemm(true, false, kA, r, n, 1.0f, u, kA, gh, r, 0.0f, dAlphaD, r);         // dAlpha = u^T gh
  if (!dx.empty()) {
    float* ga = ws.take<float>(n * kA);
    float* dxd = ws.take<float>(n * dIn);
    baseBackward(dyd, n, dOut, dIn, deviceF32Optional(l.weight, ws, "weight"), dxd);
    gemm(false, true, n, kA, r, 1.0f, gh, r, alpha, r, 0.0f, ga, kA);         // ga = gh alpha^T
    gemm(false, true, n, dIn, kA, 1.0f, ga, kA, va, kA, 1.0f, dxd, dIn);      // dx += ga V_A^T
    copyToHost(dxd, n * dIn, dx.data);
  }
  copyToHost(dAlphaD, kA * r, dAlpha.data);
  copyToHost(dBetaD, kB * r, dBeta.data);
  return ProductOrder::Project;
}

void eigenBankApply(Operand x, const EigenBankOperands& bank, const int32_t* rowAdapter, Operand weight,
                    const float* bias, MatView y) {
  const int64_t kA = bank.componentsA.cols(), kB = bank.componentsB.cols();
  checkEigenBankApply(x.shape(), coreBank(bank), rowAdapter, weight.shape(), y);
  if (kA > 12288) {
    throw CoreError(eigenlorax::code::kInvalidArgument,
                    "componentsA: at most 12288 columns on the GPU, received " + std::to_string(kA));
  }
  const int64_t n = x.rows(), dIn = x.cols(), dOut = bank.componentsB.rows();
  Workspace ws;
  float* out = ws.take<float>(n * dOut);
  const float* mixing = bank.count > 0 ? deviceF32(bank.mixing, ws, "mixing") : nullptr;
  dev::eigenBankApply(deviceF32(x, ws, "x"), n, dIn, dOut, deviceF32(bank.componentsA, ws, "componentsA"), kA,
                      deviceF32(bank.componentsB, ws, "componentsB"), kB, mixing, uploadArray(rowAdapter, n, ws),
                      deviceF32Optional(weight, ws, "weight"), biasOnDevice(bias, dOut, ws), out, ws);
  copyToHost(out, n * dOut, y.data);
}

void loraBankApply(Operand x, const LoraBankOperands& bank, const int32_t* rowAdapter, Operand weight,
                   const float* bias, MatView y) {
  checkLoraBankApply(x.shape(), coreBank(bank), rowAdapter, weight.shape(), y);
  const int64_t n = x.rows(), dIn = x.cols(), dOut = y.cols;
  const size_t count = bank.a.size();
  Workspace ws;
  std::vector<const float*> aPtrs(count), bPtrs(count);
  std::vector<int32_t> ranks(count);
  int32_t maxRank = 0;
  for (size_t i = 0; i < count; ++i) {
    const std::string name = "adapters[" + std::to_string(i) + "]";
    aPtrs[i] = deviceF32(bank.a[i], ws, (name + ".A").c_str());
    bPtrs[i] = deviceF32(bank.b[i], ws, (name + ".B").c_str());
    ranks[i] = static_cast<int32_t>(bank.a[i].rows());
    maxRank = std::max(maxRank, ranks[i]);
  }
  float* out = ws.take<float>(n * dOut);
  dev::loraBankApply(deviceF32(x, ws, "x"), n, dIn, dOut, uploadArray(aPtrs.data(), static_cast<int64_t>(count), ws),
                     uploadArray(bPtrs.data(), static_cast<int64_t>(count), ws),
                     uploadArray(ranks.data(), static_cast<int64_t>(count), ws),
                     uploadArray(bank.scales.data(), static_cast<int64_t>(count), ws), maxRank,
                     uploadArray(rowAdapter, n, ws), deviceF32Optional(weight, ws, "weight"),
                     biasOnDevice(bias, dOut, ws), out, ws);
  copyToHost(out, n * dOut, y.data);
}

}  // namespace eigenlorax::cuda
