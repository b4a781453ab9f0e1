// Benchmark of the CUDA backend on the GPU (no Node). Inputs stay on the device; times are
// cudaEvent pairs on the backend's stream (context().stream), so host transfers are
// excluded except where an operation's contract includes them (rsvd returns U, s, V on
// the host). Prints tables and ratios; never passes or fails on time.
//
//   eigenlorax_cuda_bench [--repeats R] [--quick] [--only gemm|rsvd|bank] [--json PATH]
//
// (a) gemm  cuBLAS f32 GEMM rate through gemm() (device.h) on the two products of the
//           rsvd: Y = A X (m x n times n x l) and Z = A^T Y (n x m times m x l),
//           m = 16384, n = 65536, l = 144.
// (b) rsvd  dev::rsvd of A (m x n, f32, decaying spectrum), k = 128, p = 16, q = 2.
//           Halko et al. 4.4 with q power iterations makes 2q + 2 passes over A:
//           Y = A Omega, q times (Z = A^T Q, Y = A Z), then B^T = A^T Q, i.e. q + 1 of each
//           form. "GEMM floor" = (q + 1) (t(A X) + t(A^T Y)) at the rates of (a); the rest
//           of the rsvd (orthonormalisations, the small SVD, U and V to the host) is what
//           the ratio rsvd / floor shows. --only rsvd also runs (a), which the floor needs.
// (c) bank  one layer, 256 rows, d_in = d_out = 4096, K = 64, r = 16, with 1, 16, 256 and
//           1024 adapters: dev::eigenBankApply (shared products, grouped K x K middle step)
//           against dev::loraBankApply (the per-row gather of each row's own A_i, B_i),
//           for the adapter part alone (no weight) and the whole layer (x W^T + b + adapters).
//           The LoRA factors are the reconstructions of the same coefficients
//           (A_i = alpha_i^T V_A^T, B_i = U_B beta_i), so both compute the same y; the
//           table shows their max relative difference. Rows go round robin over N adapters
//           when N <= 256; with N > 256 they are spread evenly over the whole bank (a 256-row
//           batch cannot hold more than 256 distinct adapters), as bench/serve.ts does.
//
// --quick: m = 2048, n = 8192 and d = 1024 (seconds). --repeats: timed rounds (default 10,
// 5 with --quick) after a warm-up round. Calls under 2 ms run in bursts of back-to-back
// calls between one pair of events; the time per call is reported.
// Exit status: 0 done, 1 error, 2 bad usage, 77 no usable GPU ("SKIP: <reason>").
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/errors.h"
#include "core/random.h"
#include "cuda/backend.h"
#include "cuda/device.h"
#include "table.h"

namespace {

using eigenlorax::bench::fmt;
using eigenlorax::bench::printTable;

namespace cu = eigenlorax::cuda;
namespace el = eigenlorax;

constexpr int kSkipStatus = 77;
constexpr double kBurstMs = 2.0;
constexpr int kMaxBurst = 50;

// --- device memory and timing --------------------------------------------------------

template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (count > 0) {
      cu::check(cudaMalloc(reinterpret_cast<void**>(&ptr_), count * sizeof(T)),
                "allocating " + std::to_string(count * sizeof(T) >> 20) + " MiB");
    }
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept : ptr_(other.ptr_), count_(other.count_) {
    other.ptr_ = nullptr;
    other.count_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&&) = delete;
  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  // On the backend's stream, then synchronised: that stream may not wait for the legacy
  // default stream, so plain cudaMemcpy could race with the next operation.
  void upload(const std::vector<T>& host) {
    if (host.size() != count_) throw std::logic_error("upload: size mismatch");
    cu::check(cudaMemcpyAsync(ptr_, host.data(), count_ * sizeof(T), cudaMemcpyHostToDevice, cu::context().stream),
              "copy to the device");
    cu::synchronize("copy to the device");
  }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    cu::check(cudaMemcpyAsync(host.data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost, cu::context().stream),
              "copy to the host");
    cu::synchronize("copy to the host");
    return host;
  }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

class EventTimer {
 public:
  EventTimer() {
    cu::check(cudaEventCreate(&start_), "cudaEventCreate");
    cu::check(cudaEventCreate(&stop_), "cudaEventCreate");
  }
  ~EventTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  // Milliseconds per call of `burst` back-to-back calls.
  double ms(const std::function<void()>& fn, int burst = 1) {
    const cudaStream_t stream = cu::context().stream;
    cu::check(cudaEventRecord(start_, stream), "cudaEventRecord");
    for (int i = 0; i < burst; ++i) fn();
    cu::check(cudaEventRecord(stop_, stream), "cudaEventRecord");
    cu::check(cudaEventSynchronize(stop_), "cudaEventSynchronize");
    float elapsed = 0;
    cu::check(cudaEventElapsedTime(&elapsed, start_, stop_), "cudaEventElapsedTime");
    return double(elapsed) / burst;
  }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

double medianOf(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t mid = v.size() / 2;
  return v.size() % 2 ? v[mid] : 0.5 * (v[mid - 1] + v[mid]);
}

struct Contender {
  Contender(std::string name_, std::function<void()> fn_) : name(std::move(name_)), fn(std::move(fn_)) {}
  std::string name;
  std::function<void()> fn;
  int burst = 1;
  std::vector<double> ms;
  double median() const { return medianOf(ms); }
};

// One warm-up round (arena growth, cuBLAS heuristics, clocks), which also sizes the bursts,
// then `rounds` rounds running every contender once, the order alternating.
void runInterleaved(std::vector<Contender>& cs, int rounds, EventTimer& timer) {
  for (auto& c : cs) {
    c.fn();
    const double once = timer.ms(c.fn);
    c.burst = once >= kBurstMs ? 1 : std::min(kMaxBurst, std::max(1, int(std::ceil(kBurstMs / std::max(once, 1e-3)))));
  }
  for (int r = 0; r < rounds; ++r) {
    for (size_t i = 0; i < cs.size(); ++i) {
      Contender& c = cs[r % 2 == 0 ? i : cs.size() - 1 - i];
      c.ms.push_back(timer.ms(c.fn, c.burst));
    }
  }
}

// --- host data -----------------------------------------------------------------------

// Gaussians times `scale` (per column when `columnScale` is given), in parallel chunks with
// one seeded stream each: the values do not depend on the thread count.
std::vector<float> gaussianHost(size_t rows, size_t cols, uint64_t seed, double scale,
                                const std::vector<double>* columnScale = nullptr) {
  std::vector<float> out(rows * cols);
  constexpr size_t kChunk = size_t(1) << 20;
  const size_t chunks = (out.size() + kChunk - 1) / kChunk;
  const unsigned threads = std::max(1u, std::min(std::thread::hardware_concurrency(), 32u));
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (size_t c = t; c < chunks; c += threads) {
        el::Rng rng(seed * 0x9e3779b97f4a7c15ULL + c);
        const size_t end = std::min(out.size(), (c + 1) * kChunk);
        for (size_t i = c * kChunk; i < end; ++i) {
          const double s = columnScale != nullptr ? (*columnScale)[i % cols] : 1.0;
          out[i] = static_cast<float>(scale * s * rng.gaussian());
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  return out;
}

template <typename T>
DeviceBuffer<T> toDevice(const std::vector<T>& host) {
  DeviceBuffer<T> d(host.size());
  d.upload(host);
  return d;
}

// --- output --------------------------------------------------------------------------

std::string fmtMs(double ms) {
  return fmt(ms >= 100 ? "%.0f" : ms >= 10 ? "%.1f" : ms >= 1 ? "%.2f" : "%.3f", ms);
}

std::string jsonNumber(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string jsonString(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    if (static_cast<unsigned char>(ch) >= 0x20) out += ch;
  }
  return out + "\"";
}

// --- the benchmarks ------------------------------------------------------------------

struct Config {
  bool quick = false;
  int repeats = 10;
  std::string only;  // "", "gemm", "rsvd", "bank"
  std::string jsonPath;
  int64_t m = 16384, n = 65536;
  int64_t k = 128, p = 16;
  int q = 2;
  int64_t rows = 256, d = 4096, components = 64, rank = 16;
  std::vector<int64_t> counts = {1, 16, 256, 1024};
};

struct GemmResult {
  double msAX = NAN, msAtY = NAN;
  double tflopsAX = NAN, tflopsAtY = NAN;
};

struct RsvdResult {
  double ms = NAN, floorMs = NAN, ratio = NAN, uvToHostMs = NAN;
  float s0 = NAN, sk = NAN;
  bool exact = false;
  int64_t sketch = 0;
  cu::dev::RsvdStages stages;  // one more call, synchronised between its stages
  double stagedMs = NAN;
};

struct BankResult {
  int64_t adapters = 0, distinct = 0;
  double eigenAdapter = NAN, loraAdapter = NAN, eigenLayer = NAN, loraLayer = NAN, base = NAN;
  double maxRelDiff = NAN;
};

// A (m x n) = G1 diag(s) G2 + noise on the device: s_j = 1/(1+j) for j < 256 (G1, G2
// Gaussian, scaled so that the product's singular values are about s_j), plus a rank-512
// Gaussian product whose singular values are about 0.1 s_k. The same recipe as
// bench/gpu/torch_peers.py, and the shape of the spectrum of bench/rsvd.ts.
DeviceBuffer<float> buildTestMatrix(const Config& c) {
  const int64_t m = c.m, n = c.n, signal = 256, noise = 512;
  std::vector<double> s(signal);
  for (int64_t j = 0; j < signal; ++j) s[size_t(j)] = 1.0 / double(1 + j);
  const double noiseLevel = 0.1 / double(1 + c.k);
  DeviceBuffer<float> a(size_t(m) * size_t(n));
  {
    const auto g1 = toDevice(gaussianHost(size_t(m), size_t(signal), 1, 1.0 / std::sqrt(double(m)), &s));
    const auto g2 = toDevice(gaussianHost(size_t(signal), size_t(n), 2, 1.0 / std::sqrt(double(n))));
    cu::gemm(false, false, m, n, signal, 1.0f, g1.get(), signal, g2.get(), n, 0.0f, a.get(), n);
  }
  {
    const auto g3 = toDevice(gaussianHost(size_t(m), size_t(noise), 3, 1.0 / std::sqrt(double(m))));
    const auto g4 = toDevice(gaussianHost(size_t(noise), size_t(n), 4, 1.0 / std::sqrt(double(n))));
    cu::gemm(false, false, m, n, noise, float(noiseLevel), g3.get(), noise, g4.get(), n, 1.0f, a.get(), n);
  }
  cu::synchronize("building the test matrix");
  return a;
}

GemmResult benchGemm(const Config& c, const DeviceBuffer<float>& a, EventTimer& timer) {
  const int64_t m = c.m, n = c.n, l = c.k + c.p;
  const auto x = toDevice(gaussianHost(size_t(n), size_t(l), 5, 1.0));
  DeviceBuffer<float> y(size_t(m) * size_t(l)), z(size_t(n) * size_t(l));
  std::vector<Contender> cs;
  cs.push_back({"A X", [&] { cu::gemm(false, false, m, l, n, 1.0f, a.get(), n, x.get(), l, 0.0f, y.get(), l); }});
  cs.push_back({"A^T Y", [&] { cu::gemm(true, false, n, l, m, 1.0f, a.get(), n, y.get(), l, 0.0f, z.get(), l); }});
  runInterleaved(cs, c.repeats, timer);
  GemmResult r;
  const double flops = 2.0 * double(m) * double(n) * double(l);
  r.msAX = cs[0].median();
  r.msAtY = cs[1].median();
  r.tflopsAX = flops / (r.msAX * 1e-3) / 1e12;
  r.tflopsAtY = flops / (r.msAtY * 1e-3) / 1e12;
  return r;
}

RsvdResult benchRsvd(const Config& c, const DeviceBuffer<float>& a, const GemmResult& g, EventTimer& timer) {
  const int64_t m = c.m, n = c.n, k = c.k;
  el::RsvdOptions o;
  o.rank = k;
  o.oversample = c.p;
  o.powerIters = c.q;
  o.seed = 7;
  o.method = el::SvdMethod::Randomized;
  std::vector<float> u(static_cast<size_t>(m * k)), v(static_cast<size_t>(n * k)), s(static_cast<size_t>(k));
  el::RsvdInfo info;
  std::vector<Contender> cs;
  cs.push_back({"rsvd", [&] {
                  cu::Workspace ws;
                  info = cu::dev::rsvd(a.get(), m, n, o, {u.data(), m, k}, s.data(), {v.data(), n, k}, ws);
                }});
  runInterleaved(cs, c.repeats, timer);
  RsvdResult r;
  r.ms = cs[0].median();
  r.floorMs = double(c.q + 1) * (g.msAX + g.msAtY);
  r.ratio = r.ms / r.floorMs;
  r.s0 = s.front();
  r.sk = s.back();
  r.exact = info.exact;
  r.sketch = info.sketchSize;
  {
    const auto t0 = std::chrono::steady_clock::now();
    cu::Workspace ws;
    cu::dev::rsvd(a.get(), m, n, o, {u.data(), m, k}, s.data(), {v.data(), n, k}, ws, &r.stages);
    r.stagedMs = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  // The part of the rsvd's contract that is a plain copy: U and V into pageable host memory.
  {
    DeviceBuffer<float> uv(size_t((m + n) * k));
    std::vector<float> host(uv.size());
    std::vector<Contender> copy;
    copy.push_back({"U, V to host", [&] {
                      cu::check(cudaMemcpyAsync(host.data(), uv.get(), uv.size() * sizeof(float), cudaMemcpyDeviceToHost,
                                                cu::context().stream),
                                "copy to the host");
                    }});
    runInterleaved(copy, std::min(c.repeats, 5), timer);
    r.uvToHostMs = copy[0].median();
  }
  return r;
}

std::vector<BankResult> benchBank(const Config& c, EventTimer& timer) {
  const int64_t n = c.rows, dIn = c.d, dOut = c.d, kk = c.components, r = c.rank;
  const int64_t maxCount = *std::max_element(c.counts.begin(), c.counts.end());
  const float scale = 1.0f;
  const auto x = toDevice(gaussianHost(size_t(n), size_t(dIn), 11, 1.0));
  const auto w = toDevice(gaussianHost(size_t(dOut), size_t(dIn), 12, 1.0 / std::sqrt(double(dIn))));
  const auto bias = toDevice(gaussianHost(1, size_t(dOut), 13, 1.0));
  const auto vA = toDevice(gaussianHost(size_t(dIn), size_t(kk), 14, 1.0 / std::sqrt(double(dIn))));
  const auto uB = toDevice(gaussianHost(size_t(dOut), size_t(kk), 15, 1.0 / std::sqrt(double(dOut))));
  const auto alpha = toDevice(gaussianHost(size_t(maxCount * kk), size_t(r), 16, 1.0));  // alpha_i: K x r each
  const auto beta = toDevice(gaussianHost(size_t(maxCount * kk), size_t(r), 17, 1.0));
  // Each adapter as the bank holds it (M_i = s alpha_i beta_i^T) and as LoRA factors
  // (A_i = alpha_i^T V_A^T, B_i = U_B beta_i): the same delta, two forms.
  DeviceBuffer<float> mixing(size_t(maxCount * kk * kk)), aAll(size_t(maxCount * r * dIn)), bAll(size_t(maxCount * dOut * r));
  for (int64_t i = 0; i < maxCount; ++i) {
    const float* al = alpha.get() + i * kk * r;
    const float* be = beta.get() + i * kk * r;
    cu::gemm(false, true, kk, kk, r, scale, al, r, be, r, 0.0f, mixing.get() + i * kk * kk, kk);
    cu::gemm(true, true, r, dIn, kk, 1.0f, al, r, vA.get(), kk, 0.0f, aAll.get() + i * r * dIn, dIn);
    cu::gemm(false, false, dOut, r, kk, 1.0f, uB.get(), kk, be, r, 0.0f, bAll.get() + i * dOut * r, r);
  }
  std::vector<const float*> aPtrHost, bPtrHost;
  for (int64_t i = 0; i < maxCount; ++i) {
    aPtrHost.push_back(aAll.get() + i * r * dIn);
    bPtrHost.push_back(bAll.get() + i * dOut * r);
  }
  const auto aPtrs = toDevice(aPtrHost), bPtrs = toDevice(bPtrHost);
  const auto ranks = toDevice(std::vector<int32_t>(size_t(maxCount), int32_t(r)));
  const auto scales = toDevice(std::vector<float>(size_t(maxCount), scale));
  DeviceBuffer<float> yE(size_t(n * dOut)), yL(size_t(n * dOut)), yB(size_t(n * dOut));

  std::vector<BankResult> results;
  for (const int64_t count : c.counts) {
    std::vector<int32_t> rowHost(static_cast<size_t>(n));
    for (int64_t b = 0; b < n; ++b) rowHost[size_t(b)] = int32_t(count <= n ? b % count : b * count / n);
    std::vector<int32_t> seen(rowHost);
    std::sort(seen.begin(), seen.end());
    const int64_t distinct = std::unique(seen.begin(), seen.end()) - seen.begin();
    const auto rows = toDevice(rowHost);

    const auto eigen = [&](bool layer) {
      cu::Workspace ws;
      cu::dev::eigenBankApply(x.get(), n, dIn, dOut, vA.get(), kk, uB.get(), kk, mixing.get(), rows.get(),
                              layer ? w.get() : nullptr, layer ? bias.get() : nullptr, yE.get(), ws);
    };
    const auto lora = [&](bool layer) {
      cu::Workspace ws;
      cu::dev::loraBankApply(x.get(), n, dIn, dOut, aPtrs.get(), bPtrs.get(), ranks.get(), scales.get(), int32_t(r),
                             rows.get(), layer ? w.get() : nullptr, layer ? bias.get() : nullptr, yL.get(), ws);
    };
    // Same adapters computed two ways: the outputs must agree before the times mean anything.
    eigen(false);
    lora(false);
    const auto ye = yE.download(), yl = yL.download();
    double diff = 0, ref = 0;
    for (size_t i = 0; i < ye.size(); ++i) {
      diff = std::max(diff, double(std::fabs(ye[i] - yl[i])));
      ref = std::max(ref, double(std::fabs(yl[i])));
    }

    std::vector<Contender> cs;
    cs.push_back({"eigen adapter", [&] { eigen(false); }});
    cs.push_back({"lora adapter", [&] { lora(false); }});
    cs.push_back({"eigen layer", [&] { eigen(true); }});
    cs.push_back({"lora layer", [&] { lora(true); }});
    cs.push_back({"base", [&] { cu::dev::base(x.get(), n, dIn, dOut, w.get(), bias.get(), yB.get()); }});
    runInterleaved(cs, c.repeats, timer);
    BankResult br;
    br.adapters = count;
    br.distinct = distinct;
    br.eigenAdapter = cs[0].median();
    br.loraAdapter = cs[1].median();
    br.eigenLayer = cs[2].median();
    br.loraLayer = cs[3].median();
    br.base = cs[4].median();
    br.maxRelDiff = ref > 0 ? diff / ref : diff;
    results.push_back(br);
    std::fprintf(stderr, "  bank: %lld adapters done\n", (long long)count);
  }
  return results;
}

int usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [--repeats R] [--quick] [--only gemm|rsvd|bank] [--json PATH]\n", argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  int repeats = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) {
      repeats = std::atoi(argv[++i]);
      if (repeats < 1) return usage(argv[0]);
    } else if (std::strcmp(argv[i], "--quick") == 0) {
      c.quick = true;
    } else if (std::strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
      c.only = argv[++i];
      if (c.only != "gemm" && c.only != "rsvd" && c.only != "bank") return usage(argv[0]);
    } else if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      c.jsonPath = argv[++i];
    } else {
      return usage(argv[0]);
    }
  }
  if (c.quick) {
    c.m = 2048;
    c.n = 8192;
    c.d = 1024;
  }
  c.repeats = repeats > 0 ? repeats : c.quick ? 5 : 10;
  const bool doGemm = c.only.empty() || c.only == "gemm" || c.only == "rsvd";
  const bool doRsvd = c.only.empty() || c.only == "rsvd";
  const bool doBank = c.only.empty() || c.only == "bank";

  const cu::Availability av = cu::probe();
  if (!av.available) {
    std::printf("SKIP: %s\n", av.reason.c_str());
    if (!c.jsonPath.empty()) std::ofstream(c.jsonPath) << "{\"skipped\":true,\"reason\":" << jsonString(av.reason) << "}\n";
    return kSkipStatus;
  }

  std::string device = av.devices.empty() ? "unknown" : av.devices[0].name;
  char date[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  std::printf("# eigenlorax CUDA backend benchmark%s\n", c.quick ? " (--quick shapes)" : "");
  std::printf("date        %s\n", date);
  if (!av.devices.empty()) {
    const auto& dv = av.devices[0];
    std::printf("device      %s, compute %d.%d, %d SMs, %.1f GiB (%.1f free)\n", dv.name.c_str(), dv.major, dv.minor,
                dv.multiprocessors, double(dv.totalBytes) / (1 << 30), double(dv.freeBytes) / (1 << 30));
  }
  std::printf("cuBLAS      %d (%s); runtime %d, driver %d\n", av.cublasVersion, av.cublasLibrary.c_str(),
              av.runtimeVersion, av.driverVersion);
  std::printf("timing      cudaEvents on the backend's stream; medians of %d rounds after a warm-up round;\n"
              "            contenders interleaved (order alternating); calls under %.0f ms in bursts\n\n",
              c.repeats, kBurstMs);
  std::fflush(stdout);

  GemmResult gemm;
  RsvdResult rsvd;
  std::vector<BankResult> bank;
  try {
    EventTimer timer;
    if (doGemm || doRsvd) {
      std::fprintf(stderr, "  building the %lld x %lld test matrix ...\n", (long long)c.m, (long long)c.n);
      const DeviceBuffer<float> a = buildTestMatrix(c);
      if (doGemm) {
        gemm = benchGemm(c, a, timer);
        const int64_t l = c.k + c.p;
        std::printf("## (a) f32 GEMM through cuBLAS (gemm() of device.h), the products of the rsvd\n");
        printTable({"product", "shape", "median ms", "TFLOP/s"},
                   {{"Y = A X", std::to_string(c.m) + " x " + std::to_string(c.n) + " . " + std::to_string(c.n) + " x " +
                                    std::to_string(l),
                     fmtMs(gemm.msAX), fmt("%.1f", gemm.tflopsAX)},
                    {"Z = A^T Y", std::to_string(c.n) + " x " + std::to_string(c.m) + " . " + std::to_string(c.m) + " x " +
                                      std::to_string(l),
                     fmtMs(gemm.msAtY), fmt("%.1f", gemm.tflopsAtY)}});
        std::printf("\n");
      }
      if (doRsvd) {
        rsvd = benchRsvd(c, a, gemm, timer);
        std::printf("## (b) rsvd of %lld x %lld (f32 on the device), k = %lld, p = %lld, q = %d\n", (long long)c.m,
                    (long long)c.n, (long long)c.k, (long long)c.p, c.q);
        printTable({"rsvd ms", "GEMM floor ms", "rsvd / floor", "U,V to host ms", "sketch l", "s_0", "s_k-1"},
                   {{fmtMs(rsvd.ms), fmtMs(rsvd.floorMs), fmt("%.2fx", rsvd.ratio), fmtMs(rsvd.uvToHostMs),
                     std::to_string(rsvd.sketch), fmt("%.4g", rsvd.s0), fmt("%.4g", rsvd.sk)}});
        std::printf("GEMM floor = %d passes over A ((q + 1) of A X and of A^T Y) at the rates of (a).\n"
                    "U,V to host = a plain copy of as many bytes as U and V (pageable memory): part of rsvd's contract.\n"
                    "Spectrum: about 1/(1+j) for j < 256, noise at 0.1 s_k (the construction's s_k-1 = %.4g).\n\n",
                    2 * c.q + 2, 1.0 / double(c.k));
        const cu::dev::RsvdStages& st = rsvd.stages;
        std::printf("Where the time goes: one more call, the stream synchronised between stages (%.1f ms in all):\n",
                    rsvd.stagedMs);
        printTable({"check", "test matrix", "products", "QR: Gram", "QR: Cholesky", "QR: apply", "l x l SVD",
                    "U, V, signs"},
                   {{fmtMs(st.check), fmtMs(st.testMatrix), fmtMs(st.products), fmtMs(st.gram), fmtMs(st.cholesky),
                     fmtMs(st.apply), fmtMs(st.smallSvd), fmtMs(st.factors)}});
        std::printf("\n");
      }
    }
    if (doBank) {
      bank = benchBank(c, timer);
      std::printf("## (c) multi-adapter apply, %lld rows, d_in = d_out = %lld, K = %lld, r = %lld (ms, median)\n",
                  (long long)c.rows, (long long)c.d, (long long)c.components, (long long)c.rank);
      std::vector<std::vector<std::string>> rows;
      for (const auto& b : bank) {
        rows.push_back({std::to_string(b.adapters), std::to_string(b.distinct), fmtMs(b.eigenAdapter),
                        fmtMs(b.loraAdapter), fmt("%.2fx", b.loraAdapter / b.eigenAdapter), fmtMs(b.eigenLayer),
                        fmtMs(b.loraLayer), fmt("%.2fx", b.loraLayer / b.eigenLayer), fmtMs(b.base),
                        fmt("%.1e", b.maxRelDiff)});
      }
      printTable({"adapters", "distinct in batch", "eigen adapter", "gather adapter", "gather/eigen", "eigen layer",
                  "gather layer", "gather/eigen", "base", "max rel diff"},
                 rows);
      std::printf("eigen = dev::eigenBankApply; gather = dev::loraBankApply (per-row LoRA gather, Punica BGMV style).\n"
                  "adapter = without weight (the adapters' delta); layer = x W^T + b + adapters; base = x W^T + b.\n"
                  "gather/eigen > 1: the bank is faster. max rel diff = max |y_eigen - y_gather| / max |y_gather|.\n");
    }
  } catch (const el::CoreError& e) {
    std::printf("ERROR: %s: %s\n", e.code(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::printf("ERROR: %s\n", e.what());
    return 1;
  }

  if (!c.jsonPath.empty()) {
    std::ostringstream j;
    j << "{\"skipped\":false,\"device\":" << jsonString(device) << ",\"quick\":" << (c.quick ? "true" : "false")
      << ",\"repeats\":" << c.repeats << ",\"cublasVersion\":" << av.cublasVersion;
    if (doGemm) {
      j << ",\"gemm\":{\"m\":" << c.m << ",\"n\":" << c.n << ",\"l\":" << c.k + c.p << ",\"msAX\":" << jsonNumber(gemm.msAX)
        << ",\"msAtY\":" << jsonNumber(gemm.msAtY) << ",\"tflopsAX\":" << jsonNumber(gemm.tflopsAX)
        << ",\"tflopsAtY\":" << jsonNumber(gemm.tflopsAtY) << "}";
    }
    if (doRsvd) {
      j << ",\"rsvd\":{\"m\":" << c.m << ",\"n\":" << c.n << ",\"k\":" << c.k << ",\"p\":" << c.p << ",\"q\":" << c.q
        << ",\"ms\":" << jsonNumber(rsvd.ms) << ",\"floorMs\":" << jsonNumber(rsvd.floorMs)
        << ",\"ratioToFloor\":" << jsonNumber(rsvd.ratio) << ",\"uvToHostMs\":" << jsonNumber(rsvd.uvToHostMs)
        << ",\"sketch\":" << rsvd.sketch << ",\"stagesMs\":{\"check\":" << jsonNumber(rsvd.stages.check)
        << ",\"testMatrix\":" << jsonNumber(rsvd.stages.testMatrix) << ",\"products\":" << jsonNumber(rsvd.stages.products)
        << ",\"gram\":" << jsonNumber(rsvd.stages.gram) << ",\"cholesky\":" << jsonNumber(rsvd.stages.cholesky)
        << ",\"apply\":" << jsonNumber(rsvd.stages.apply) << ",\"smallSvd\":" << jsonNumber(rsvd.stages.smallSvd)
        << ",\"factors\":" << jsonNumber(rsvd.stages.factors) << "}}";
    }
    if (doBank) {
      j << ",\"bank\":{\"rows\":" << c.rows << ",\"d\":" << c.d << ",\"K\":" << c.components << ",\"r\":" << c.rank
        << ",\"results\":[";
      for (size_t i = 0; i < bank.size(); ++i) {
        const auto& b = bank[i];
        j << (i ? "," : "") << "{\"adapters\":" << b.adapters << ",\"distinct\":" << b.distinct
          << ",\"eigenAdapterMs\":" << jsonNumber(b.eigenAdapter) << ",\"gatherAdapterMs\":" << jsonNumber(b.loraAdapter)
          << ",\"eigenLayerMs\":" << jsonNumber(b.eigenLayer) << ",\"gatherLayerMs\":" << jsonNumber(b.loraLayer)
          << ",\"baseMs\":" << jsonNumber(b.base) << ",\"maxRelDiff\":" << jsonNumber(b.maxRelDiff) << "}";
      }
      j << "]}";
    }
    j << "}\n";
    std::ofstream out(c.jsonPath);
    out << j.str();
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", c.jsonPath.c_str());
      return 1;
    }
  }
  return 0;
}
