// Parity test of the CUDA backend (backend.h) against the CPU core, without Node.
//
//   eigenlorax_cuda_check [--seed N] [--json PATH]
//
// Every backend operation runs on fresh seeded random inputs on the GPU and through the
// core (eigenlorax::rsvd, loraForward/Backward, eigenLoraForward/Backward,
// eigenBankApply, loraBankApply); results are compared by relative Frobenius error.
// Operands go in as host views and as device matrices stored in f32, f16 and bf16. For
// f16/bf16 the CPU reference runs on the same values rounded to that dtype (core/dtype.h),
// so every tolerance stays at f32 level. Also: rsvd singular values and vectors against
// the core and against a known spectrum, the sign convention, the exact path, rank-
// deficient and zero input; finite-difference checks of the GPU backward passes; bad
// inputs, which must throw CoreError with the right code and leave outputs untouched;
// operations called from several threads at once.
//
// One line per check, "ok <name> err=<x> tol=<y>" or "FAIL <name> ...", then a summary.
// Exit status: 0 all passed, 1 a check failed, 2 bad usage, 77 no usable GPU (prints
// "SKIP: <reason>"; 77 is the "skipped" status of automake and ctest).
#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../core/dtype.h"
#include "../core/errors.h"
#include "../core/linalg.h"
#include "../core/lowrank.h"
#include "../core/matrix.h"
#include "../core/multiadapter.h"
#include "../core/random.h"
#include "backend.h"

namespace {

namespace el = eigenlorax;
namespace cu = eigenlorax::cuda;
using el::ConstMatView;
using el::Index;
using el::MatView;
using el::RowMatF;
using RowMatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr int kSkipStatus = 77;
constexpr float kSentinel = 7.25f;  // fills outputs to see whether a failed call wrote them

ConstMatView cview(const RowMatF& m) {
  if (m.size() == 0) return {};
  return {m.data(), m.rows(), m.cols()};
}
MatView mview(RowMatF& m) {
  if (m.size() == 0) return {};
  return {m.data(), m.rows(), m.cols()};
}

// --- results -------------------------------------------------------------------------

struct Check {
  std::string name;
  bool ok = false;
  double err = NAN, tol = NAN;
  std::string note;
};
std::vector<Check> g_checks;

void record(const std::string& name, double err, double tol, const std::string& note = "") {
  const bool ok = err <= tol;  // false for NaN
  std::printf("%s %s err=%.3g tol=%.3g%s%s\n", ok ? "ok" : "FAIL", name.c_str(), err, tol, note.empty() ? "" : "  ",
              note.c_str());
  std::fflush(stdout);
  g_checks.push_back({name, ok, err, tol, note});
}

void recordFailure(const std::string& name, const std::string& why) {
  std::printf("FAIL %s %s\n", name.c_str(), why.c_str());
  std::fflush(stdout);
  g_checks.push_back({name, false, NAN, NAN, why});
}

// Several errors of one call (e.g. dx, dA, dB) as one line: the largest counts.
void recordAll(const std::string& name, const std::vector<std::pair<const char*, double>>& errs, double tol) {
  double worst = 0;
  std::string note;
  for (const auto& [what, e] : errs) {
    if (std::isnan(e) || std::isnan(worst)) worst = NAN;
    else worst = std::max(worst, e);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s%s=%.2g", note.empty() ? "" : " ", what, e);
    note += buf;
  }
  record(name, worst, tol, note);
}

// Runs one check; an unexpected exception fails that check, not the run.
void guarded(const std::string& name, const std::function<void()>& body) {
  try {
    body();
  } catch (const el::CoreError& e) {
    recordFailure(name, std::string("threw ") + e.code() + ": " + e.what());
  } catch (const std::exception& e) {
    recordFailure(name, std::string("threw: ") + e.what());
  }
}

// The call must throw CoreError with one of `codes` (any CoreError when `codes` is empty).
void expectError(const std::string& name, std::vector<const char*> codes, const std::function<void()>& call) {
  try {
    call();
  } catch (const el::CoreError& e) {
    bool match = codes.empty();
    for (const char* c : codes) match = match || std::strcmp(c, e.code()) == 0;
    if (match) {
      record(name, 0, 0, std::string("threw ") + e.code());
    } else {
      std::string want;
      for (const char* c : codes) want += (want.empty() ? "" : "|") + std::string(c);
      recordFailure(name, std::string("threw ") + e.code() + ", expected " + want + ": " + e.what());
    }
    return;
  } catch (const std::exception& e) {
    recordFailure(name, std::string("threw something other than CoreError: ") + e.what());
    return;
  }
  recordFailure(name, "did not throw");
}

// --- numbers -------------------------------------------------------------------------

RowMatF gaussian(el::Rng& rng, Index rows, Index cols, double scale) {
  RowMatF m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(scale * rng.gaussian());
  return m;
}

std::vector<float> gaussianVector(el::Rng& rng, Index n, double scale) {
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>(scale * rng.gaussian());
  return v;
}

// ||got - want||_F / ||want||_F in double (absolute when want is 0).
double relErr(const RowMatF& got, const RowMatF& want) {
  const double diff = (got.cast<double>() - want.cast<double>()).norm();
  const double ref = want.cast<double>().norm();
  return ref > 0 ? diff / ref : diff;
}

// f32 products accumulate rounding of about eps sqrt(K) (K: the longest inner dimension)
// on each side; 4e-6 sqrt(K), clamped to [1e-5, 1e-4], leaves room for both and is still
// orders of magnitude below what a wrong index, stride, scale or transpose gives.
double tolF32(Index inner) { return std::min(1e-4, std::max(1e-5, 4e-6 * std::sqrt(static_cast<double>(inner)))); }

std::string fmt(const char* f, double a, double b = 0, double c = 0, double d = 0) {
  char buf[160];
  std::snprintf(buf, sizeof buf, f, a, b, c, d);
  return buf;
}

// --- operands ------------------------------------------------------------------------

enum class Storage { Host, F32, F16, BF16 };

cu::DType deviceDType(Storage s) {
  return s == Storage::F16 ? cu::DType::F16 : s == Storage::BF16 ? cu::DType::BF16 : cu::DType::F32;
}

float roundTo(Storage s, float v) {
  if (s == Storage::F16) return el::f16ToF32(el::f32ToF16(v));
  if (s == Storage::BF16) return el::bf16ToF32(el::f32ToBf16(v));
  return v;
}

// A device matrix that releases itself.
class DevMat {
 public:
  DevMat(const RowMatF& values, cu::DType dtype) : m_(cu::allocate(values.rows(), values.cols(), dtype)) {
    try {
      if (dtype == cu::DType::F32) {
        cu::upload(m_, values.data());
      } else {
        std::vector<uint16_t> bits(static_cast<size_t>(values.size()));
        for (Index i = 0; i < values.size(); ++i) {
          const float v = values.data()[i];
          bits[static_cast<size_t>(i)] = dtype == cu::DType::F16 ? el::f32ToF16(v) : el::f32ToBf16(v);
        }
        cu::upload(m_, bits.data());
      }
    } catch (...) {
      cu::release(m_);
      throw;
    }
  }
  ~DevMat() { cu::release(m_); }
  DevMat(const DevMat&) = delete;
  DevMat& operator=(const DevMat&) = delete;
  const cu::DeviceMatrix& get() const { return m_; }

 private:
  cu::DeviceMatrix m_;
};

// One input as the GPU receives it (host view or device matrix) and `ref`, the f32 values
// it holds there, which the CPU reference uses. A default Tensor is an absent operand.
struct Tensor {
  RowMatF ref;
  std::unique_ptr<DevMat> dev;
  cu::Operand op() const { return dev ? cu::Operand::of(dev->get()) : cu::Operand::of(cview(ref)); }
  ConstMatView view() const { return cview(ref); }
};

Tensor stage(const RowMatF& values, Storage s) {
  Tensor t;
  if (s == Storage::Host) {
    t.ref = values;
    return t;
  }
  t.ref = values.unaryExpr([s](float v) { return roundTo(s, v); });
  t.dev = std::make_unique<DevMat>(t.ref, deviceDType(s));
  return t;
}

// Where the inputs of a call live: the activations (x, dy) and the layer's matrices.
struct Placement {
  const char* name;
  Storage inputs, params;
};
const Placement kPlacements[] = {
    {"host", Storage::Host, Storage::Host},
    {"dev-f32", Storage::F32, Storage::F32},
    {"dev-f16", Storage::F16, Storage::F16},
    {"dev-bf16", Storage::BF16, Storage::BF16},
    {"mixed", Storage::Host, Storage::BF16},  // x, dy from the host; the layer resident in bf16
};

// --- device memory round trip ----------------------------------------------------------

void checkRoundTrip(el::Rng& rng) {
  const Storage storages[] = {Storage::F32, Storage::F16, Storage::BF16};
  for (Storage s : storages) {
    const std::string name = std::string("device.roundtrip/") + cu::dtypeName(deviceDType(s));
    guarded(name, [&] {
      RowMatF v = gaussian(rng, 37, 29, 3.0);
      // Specials every widening must keep: signed zero, f16 subnormal, f16 max, overflow, Inf.
      const float specials[] = {0.0f, -0.0f, 1e-6f, 65504.0f, -3e38f, INFINITY, -INFINITY, 1.0f / 3.0f};
      for (size_t i = 0; i < sizeof specials / sizeof specials[0]; ++i) v.data()[i * 7] = specials[i];
      const Tensor t = stage(v, s);
      RowMatF back = RowMatF::Constant(v.rows(), v.cols(), kSentinel);
      cu::download(t.dev->get(), back.data());
      Index mismatches = 0;
      for (Index i = 0; i < v.size(); ++i) {
        const float a = back.data()[i], b = t.ref.data()[i];
        const bool same = (a == b && std::signbit(a) == std::signbit(b)) || (std::isnan(a) && std::isnan(b));
        if (!same) ++mismatches;
      }
      const bool sizeOk = t.dev->get().bytes() == static_cast<size_t>(v.size()) * cu::dtypeSize(deviceDType(s));
      record(name, static_cast<double>(mismatches + (sizeOk ? 0 : 1)), 0,
             "entries differing from the uploaded values" + std::string(sizeOk ? "" : "; bytes() wrong"));
    });
  }
}

// --- single-adapter layers -----------------------------------------------------------

struct LayerShape {
  const char* name;
  Index n, dIn, dOut, r, kA, kB;
};

struct LayerData {
  RowMatF x, dy, w, a, b, vA, alpha, beta, uB;
  std::vector<float> bias;
  float scale = 0.75f;
};

// Scales keep the base product and the adapter's delta both O(1), so an error in either
// shows in the relative error of y.
LayerData makeLayer(el::Rng& rng, const LayerShape& s) {
  LayerData d;
  d.x = gaussian(rng, s.n, s.dIn, 1.0);
  d.dy = gaussian(rng, s.n, s.dOut, 1.0);
  d.w = gaussian(rng, s.dOut, s.dIn, 1.0 / std::sqrt(double(s.dIn)));
  d.a = gaussian(rng, s.r, s.dIn, 1.0 / std::sqrt(double(s.dIn)));
  d.b = gaussian(rng, s.dOut, s.r, 1.0 / std::sqrt(double(s.r)));
  d.vA = gaussian(rng, s.dIn, s.kA, 1.0 / std::sqrt(double(s.dIn)));
  d.alpha = gaussian(rng, s.kA, s.r, 1.0 / std::sqrt(double(s.kA)));
  d.beta = gaussian(rng, s.kB, s.r, 1.0 / std::sqrt(double(s.r)));
  d.uB = gaussian(rng, s.dOut, s.kB, 1.0 / std::sqrt(double(s.kB)));
  d.bias = gaussianVector(rng, s.dOut, 1.0);
  return d;
}

struct Base {
  bool weight, bias;
  const char* name;
};
const Base kForwardBases[] = {{false, false, "delta"}, {false, true, "b"}, {true, false, "W"}, {true, true, "W+b"}};
struct BackwardBase {
  bool weight, dx;  // W given (it enters dx only); dx asked for
  const char* name;
};
const BackwardBase kBackwardBases[] = {{false, false, "no-dx"}, {false, true, "dx"}, {true, true, "W,dx"}};

void checkLayers(el::Rng& rng, const LayerShape& s) {
  const LayerData d = makeLayer(rng, s);
  const double tolFwd = tolF32(std::max({s.dIn, s.kA, s.kB, s.r}));
  const double tolBwd = tolF32(std::max({s.n, s.dIn, s.dOut, s.kA, s.kB}));
  for (const Placement& pl : kPlacements) {
    const std::string where = std::string("/") + pl.name + "/" + s.name + "/";
    for (const Base& base : kForwardBases) {
      const std::string name = "lora.forward" + where + base.name;
      guarded(name, [&] {
        const Tensor x = stage(d.x, pl.inputs), a = stage(d.a, pl.params), b = stage(d.b, pl.params);
        const Tensor w = base.weight ? stage(d.w, pl.params) : Tensor{};
        const float* bias = base.bias ? d.bias.data() : nullptr;
        cu::LoraOperands g;
        g.a = a.op();
        g.b = b.op();
        g.scale = d.scale;
        g.weight = w.op();
        g.bias = bias;
        RowMatF yg = RowMatF::Constant(s.n, s.dOut, kSentinel), yc(s.n, s.dOut);
        cu::loraForward(x.op(), g, mview(yg));
        el::LoraLayer c;
        c.a = a.view();
        c.b = b.view();
        c.scale = d.scale;
        c.weight = w.view();
        c.bias = bias;
        el::loraForward(x.view(), c, mview(yc));
        record(name, relErr(yg, yc), tolFwd);
      });
    }
    for (const Base& base : kForwardBases) {
      const std::string name = "eigenLora.forward" + where + base.name;
      guarded(name, [&] {
        const Tensor x = stage(d.x, pl.inputs), vA = stage(d.vA, pl.params), alpha = stage(d.alpha, pl.params),
                     beta = stage(d.beta, pl.params), uB = stage(d.uB, pl.params);
        const Tensor w = base.weight ? stage(d.w, pl.params) : Tensor{};
        const float* bias = base.bias ? d.bias.data() : nullptr;
        cu::EigenLoraOperands g;
        g.componentsA = vA.op();
        g.alpha = alpha.op();
        g.beta = beta.op();
        g.componentsB = uB.op();
        g.scale = d.scale;
        g.weight = w.op();
        g.bias = bias;
        RowMatF yg = RowMatF::Constant(s.n, s.dOut, kSentinel), yc(s.n, s.dOut);
        const el::ProductOrder order = cu::eigenLoraForward(x.op(), g, mview(yg));
        el::EigenLoraLayer c;
        c.componentsA = vA.view();
        c.alpha = alpha.view();
        c.beta = beta.view();
        c.componentsB = uB.view();
        c.scale = d.scale;
        c.weight = w.view();
        c.bias = bias;
        el::eigenLoraForward(x.view(), c, mview(yc), el::ProductOrder::Project);
        // backend.h: the GPU always takes the Project order and says so.
        if (order != el::ProductOrder::Project) recordFailure(name, "returned an order other than Project");
        else record(name, relErr(yg, yc), tolFwd);
      });
    }
    for (const BackwardBase& base : kBackwardBases) {
      const std::string name = "lora.backward" + where + base.name;
      guarded(name, [&] {
        const Tensor x = stage(d.x, pl.inputs), dy = stage(d.dy, pl.inputs), a = stage(d.a, pl.params),
                     b = stage(d.b, pl.params);
        const Tensor w = base.weight ? stage(d.w, pl.params) : Tensor{};
        const bool wantDx = base.dx;
        cu::LoraOperands g;
        g.a = a.op();
        g.b = b.op();
        g.scale = d.scale;
        g.weight = w.op();
        RowMatF dxg, dxc, dAg = RowMatF::Constant(s.r, s.dIn, kSentinel), dAc(s.r, s.dIn),
                          dBg = RowMatF::Constant(s.dOut, s.r, kSentinel), dBc(s.dOut, s.r);
        if (wantDx) {
          dxg = RowMatF::Constant(s.n, s.dIn, kSentinel);
          dxc.resize(s.n, s.dIn);
        }
        cu::loraBackward(x.op(), dy.op(), g, mview(dxg), mview(dAg), mview(dBg));
        el::LoraLayer c;
        c.a = a.view();
        c.b = b.view();
        c.scale = d.scale;
        c.weight = w.view();
        el::loraBackward(x.view(), dy.view(), c, mview(dxc), mview(dAc), mview(dBc));
        std::vector<std::pair<const char*, double>> errs = {{"dA", relErr(dAg, dAc)}, {"dB", relErr(dBg, dBc)}};
        if (wantDx) errs.push_back({"dx", relErr(dxg, dxc)});
        recordAll(name, errs, tolBwd);
      });
    }
    for (const BackwardBase& base : kBackwardBases) {
      const std::string name = "eigenLora.backward" + where + base.name;
      guarded(name, [&] {
        const Tensor x = stage(d.x, pl.inputs), dy = stage(d.dy, pl.inputs), vA = stage(d.vA, pl.params),
                     alpha = stage(d.alpha, pl.params), beta = stage(d.beta, pl.params), uB = stage(d.uB, pl.params);
        const Tensor w = base.weight ? stage(d.w, pl.params) : Tensor{};
        const bool wantDx = base.dx;
        cu::EigenLoraOperands g;
        g.componentsA = vA.op();
        g.alpha = alpha.op();
        g.beta = beta.op();
        g.componentsB = uB.op();
        g.scale = d.scale;
        g.weight = w.op();
        RowMatF dxg, dxc, daG = RowMatF::Constant(s.kA, s.r, kSentinel), daC(s.kA, s.r),
                          dbG = RowMatF::Constant(s.kB, s.r, kSentinel), dbC(s.kB, s.r);
        if (wantDx) {
          dxg = RowMatF::Constant(s.n, s.dIn, kSentinel);
          dxc.resize(s.n, s.dIn);
        }
        const el::ProductOrder order = cu::eigenLoraBackward(x.op(), dy.op(), g, mview(dxg), mview(daG), mview(dbG));
        el::EigenLoraLayer c;
        c.componentsA = vA.view();
        c.alpha = alpha.view();
        c.beta = beta.view();
        c.componentsB = uB.view();
        c.scale = d.scale;
        c.weight = w.view();
        el::eigenLoraBackward(x.view(), dy.view(), c, mview(dxc), mview(daC), mview(dbC), el::ProductOrder::Project);
        std::vector<std::pair<const char*, double>> errs = {{"dAlpha", relErr(daG, daC)},
                                                            {"dBeta", relErr(dbG, dbC)}};
        if (wantDx) errs.push_back({"dx", relErr(dxg, dxc)});
        if (order != el::ProductOrder::Project) recordFailure(name, "returned an order other than Project");
        else recordAll(name, errs, tolBwd);
      });
    }
  }
}

// --- multi-adapter banks -------------------------------------------------------------

struct BankShape {
  const char* name;
  Index n, dIn, dOut, kA, kB, count;
  double unassigned;  // share of rows with no adapter (-1)
};

std::vector<int32_t> rowAssignment(el::Rng& rng, Index n, Index count, double unassigned) {
  std::vector<int32_t> rows(static_cast<size_t>(n));
  for (auto& r : rows) {
    r = (count == 0 || rng.uniform() < unassigned) ? -1 : static_cast<int32_t>(rng.next() % uint64_t(count));
  }
  return rows;
}

// Rows without an adapter must hold exactly the base (bias or 0) when there is no weight:
// nothing may be added to them, not even a rounding-level amount.
void checkUnassignedRows(const std::string& name, const RowMatF& y, const std::vector<int32_t>& rows,
                         const float* bias) {
  double worst = 0;
  Index count = 0;
  for (Index b = 0; b < y.rows(); ++b) {
    if (rows[static_cast<size_t>(b)] >= 0) continue;
    ++count;
    for (Index j = 0; j < y.cols(); ++j) {
      const double want = bias != nullptr ? bias[j] : 0.0;
      const double diff = std::fabs(double(y(b, j)) - want);
      worst = std::isnan(diff) ? NAN : std::max(worst, diff);
    }
  }
  if (count > 0) record(name, worst, 0, "max |y - base| over " + std::to_string(count) + " rows with -1");
}

void checkBanks(el::Rng& rng, const BankShape& s) {
  const RowMatF x = gaussian(rng, s.n, s.dIn, 1.0);
  const RowMatF w = gaussian(rng, s.dOut, s.dIn, 1.0 / std::sqrt(double(s.dIn)));
  const std::vector<float> bias = gaussianVector(rng, s.dOut, 1.0);
  const RowMatF vA = gaussian(rng, s.dIn, s.kA, 1.0 / std::sqrt(double(s.dIn)));
  const RowMatF uB = gaussian(rng, s.dOut, s.kB, 1.0 / std::sqrt(double(s.kB)));
  const RowMatF mixing = gaussian(rng, s.count * s.kA, s.kB, 1.0 / std::sqrt(double(s.kA)));
  // LoRA adapters of differing ranks 1..16 and scales.
  std::vector<RowMatF> as, bs;
  std::vector<float> scales;
  Index maxRank = 0;
  for (Index i = 0; i < s.count; ++i) {
    const Index r = 1 + (i * 5) % 16;
    maxRank = std::max(maxRank, r);
    as.push_back(gaussian(rng, r, s.dIn, 1.0 / std::sqrt(double(s.dIn))));
    bs.push_back(gaussian(rng, s.dOut, r, 1.0 / std::sqrt(double(r))));
    scales.push_back(static_cast<float>(0.5 + rng.uniform()));
  }
  const std::vector<int32_t> rows = rowAssignment(rng, s.n, s.count, s.unassigned);
  const double tolEigen = tolF32(std::max({s.dIn, s.kA, s.kB}));
  const double tolLora = tolF32(std::max(s.dIn, maxRank));

  for (const Placement& pl : kPlacements) {
    for (const Base& base : kForwardBases) {
      const std::string where = std::string("/") + pl.name + "/" + s.name + "/" + base.name;
      const float* b = base.bias ? bias.data() : nullptr;
      guarded("eigenBank.apply" + where, [&] {
        const Tensor xt = stage(x, pl.inputs), vAt = stage(vA, pl.params), uBt = stage(uB, pl.params),
                     mt = stage(mixing, pl.params);
        const Tensor wt = base.weight ? stage(w, pl.params) : Tensor{};
        cu::EigenBankOperands g;
        g.componentsA = vAt.op();
        g.componentsB = uBt.op();
        g.mixing = mt.op();
        g.count = s.count;
        RowMatF yg = RowMatF::Constant(s.n, s.dOut, kSentinel), yc(s.n, s.dOut);
        cu::eigenBankApply(xt.op(), g, rows.data(), wt.op(), b, mview(yg));
        el::EigenAdapterBank c;
        c.componentsA = vAt.view();
        c.componentsB = uBt.view();
        c.mixing = mt.ref.data();
        c.count = s.count;
        el::eigenBankApply(xt.view(), c, rows.data(), wt.view(), b, mview(yc));
        record("eigenBank.apply" + where, relErr(yg, yc), tolEigen);
        if (!base.weight) checkUnassignedRows("eigenBank.unassigned" + where, yg, rows, b);
      });
      guarded("loraBank.apply" + where, [&] {
        const Tensor xt = stage(x, pl.inputs);
        const Tensor wt = base.weight ? stage(w, pl.params) : Tensor{};
        std::vector<Tensor> at, bt;
        for (Index i = 0; i < s.count; ++i) {
          at.push_back(stage(as[size_t(i)], pl.params));
          bt.push_back(stage(bs[size_t(i)], pl.params));
        }
        cu::LoraBankOperands g;
        el::LoraBank c;
        for (Index i = 0; i < s.count; ++i) {
          g.a.push_back(at[size_t(i)].op());
          g.b.push_back(bt[size_t(i)].op());
          c.a.push_back(at[size_t(i)].view());
          c.b.push_back(bt[size_t(i)].view());
        }
        g.scales = scales;
        c.scales = scales;
        RowMatF yg = RowMatF::Constant(s.n, s.dOut, kSentinel), yc(s.n, s.dOut);
        cu::loraBankApply(xt.op(), g, rows.data(), wt.op(), b, mview(yg));
        el::loraBankApply(xt.view(), c, rows.data(), wt.view(), b, mview(yc));
        record("loraBank.apply" + where, relErr(yg, yc), tolLora);
        if (!base.weight) checkUnassignedRows("loraBank.unassigned" + where, yg, rows, b);
      });
    }
  }
}

// --- randomized SVD ------------------------------------------------------------------

// A = Q1 diag(s) Q2^T with random orthonormal Q1, Q2: the singular values are s (up to
// the f32 rounding of A).
RowMatF spectrumMatrix(el::Rng& rng, Index m, Index n, const std::vector<double>& s) {
  const Index t = static_cast<Index>(s.size());
  const RowMatF g1 = gaussian(rng, m, t, 1.0), g2 = gaussian(rng, n, t, 1.0);
  RowMatF q1(m, t), q2(n, t);
  el::orthonormalize(cview(g1), mview(q1));
  el::orthonormalize(cview(g2), mview(q2));
  Eigen::VectorXf sv(t);
  for (Index j = 0; j < t; ++j) sv(j) = static_cast<float>(s[size_t(j)]);
  return (q1 * sv.asDiagonal()) * q2.transpose();
}

// Decaying spectrum with distinct gaps: the top k fall linearly from 1 to 0.3 (gap 0.7/k
// between neighbours, so each singular vector is well determined), then a tail from 0.02
// decaying by 0.9, so the rank-k subspace is separated from the rest.
std::vector<double> testSpectrum(Index m, Index n, Index k) {
  const Index t = std::min({m, n, k + 60});
  std::vector<double> s(static_cast<size_t>(t));
  for (Index j = 0; j < t; ++j) s[size_t(j)] = j < k ? 1.0 - 0.7 * double(j) / double(k) : 0.02 * std::pow(0.9, double(j - k));
  return s;
}

struct RsvdCase {
  const char* name;
  Index m, n, k, p;
  int q;
  el::SvdMethod method;
  Storage storage;
  bool truth;  // compare the singular values with the constructed spectrum too
  Index rank = 0;  // the exact rank of A (at least k) when below the sketch size; 0: full
};

// max_ij | |X^T Y|_ij - I_ij |: columns matched one to one, up to sign.
double alignment(const RowMatF& x, const RowMatF& y) {
  if (!x.allFinite() || !y.allFinite()) return NAN;
  const RowMatD c = (x.cast<double>().transpose() * y.cast<double>()).cwiseAbs();
  return (c - RowMatD::Identity(c.rows(), c.cols())).cwiseAbs().maxCoeff();
}

double reconstructionError(const RowMatF& a, const RowMatF& u, const std::vector<float>& s, const RowMatF& v) {
  const Eigen::Map<const Eigen::VectorXf> sv(s.data(), static_cast<Index>(s.size()));
  const RowMatF r = a - (u * sv.asDiagonal()) * v.transpose();
  return double(r.norm()) / double(a.norm());
}

void checkRsvd(el::Rng& rng, const RsvdCase& c) {
  const std::string name = std::string("rsvd/") + c.name;
  guarded(name, [&] {
    std::vector<double> spectrum = testSpectrum(c.m, c.n, c.k);
    if (c.rank > 0) spectrum.resize(static_cast<size_t>(c.rank));
    const Tensor a = stage(spectrumMatrix(rng, c.m, c.n, spectrum), c.storage);
    el::RsvdOptions o;
    o.rank = c.k;
    o.oversample = c.p;
    o.powerIters = c.q;
    o.seed = rng.next();
    o.method = c.method;
    RowMatF ug = RowMatF::Constant(c.m, c.k, kSentinel), vg = RowMatF::Constant(c.n, c.k, kSentinel), uc(c.m, c.k),
            vc(c.n, c.k);
    std::vector<float> sg(size_t(c.k), kSentinel), sc(size_t(c.k));
    const el::RsvdInfo ig = cu::rsvd(a.op(), o, mview(ug), sg.data(), mview(vg));
    const el::RsvdInfo ic = el::rsvd(a.view(), o, mview(uc), sc.data(), mview(vc));

    record(name + "/path", ig.exact == ic.exact && ig.sketchSize == ic.sketchSize ? 0 : 1, 0,
           fmt("gpu exact=%.0f l=%.0f, cpu exact=%.0f l=%.0f", ig.exact, double(ig.sketchSize), ic.exact,
               double(ic.sketchSize)));
    // Same test matrix Omega on both sides: the results differ by rounding only.
    double sErr = 0, truthErr = 0;
    for (Index j = 0; j < c.k; ++j) {
      const double e = std::fabs(double(sg[size_t(j)]) - sc[size_t(j)]) / sc[size_t(j)];
      const double t = std::fabs(double(sg[size_t(j)]) - spectrum[size_t(j)]) / spectrum[size_t(j)];
      sErr = std::isnan(e) ? NAN : std::max(sErr, e);
      truthErr = std::isnan(t) ? NAN : std::max(truthErr, t);
    }
    record(name + "/sigma", sErr, 1e-4, "max relative difference from the core's singular values");
    if (c.truth) record(name + "/sigma-vs-spectrum", truthErr, 1e-4, "max relative error against the constructed spectrum");
    // The gaps of the spectrum are >= 0.7/k, so rounding moves each vector by ~1e-5 at most.
    record(name + "/U", alignment(ug, uc), 1e-3, "max | |U_gpu^T U_cpu| - I |");
    record(name + "/V", alignment(vg, vc), 1e-3, "max | |V_gpu^T V_cpu| - I |");
    // Sign convention (core/linalg.h): each u column's largest-magnitude entry is positive.
    Index wrongSigns = 0;
    for (Index j = 0; j < c.k; ++j) {
      Index at = 0;
      ug.col(j).cwiseAbs().maxCoeff(&at);
      if (!(ug(at, j) > 0)) ++wrongSigns;
    }
    record(name + "/signs", double(wrongSigns), 0, "U columns whose largest-magnitude entry is not positive");
    // U, s, V together (and V's signs following U's): the rank-k residual matches the core's.
    const double eg = reconstructionError(a.ref, ug, sg, vg), ec = reconstructionError(a.ref, uc, sc, vc);
    record(name + "/residual", std::fabs(eg - ec), 1e-5 + 1e-3 * ec,
           fmt("||A - U S V^T||_F / ||A||_F gpu %.6g cpu %.6g", eg, ec));
  });
}

// A zero matrix: s = 0, and U, V still with orthonormal columns (the CPU's: the leading
// columns of the identity), which the relative errors of checkRsvd cannot measure.
void checkRsvdZero() {
  const std::string name = "rsvd/zero/dev-f32";
  guarded(name, [&] {
    const Index m = 300, n = 200, k = 8;
    const Tensor a = stage(RowMatF::Zero(m, n), Storage::F32);
    el::RsvdOptions o;
    o.rank = k;
    o.oversample = 8;
    o.method = el::SvdMethod::Randomized;
    RowMatF ug = RowMatF::Constant(m, k, kSentinel), vg = RowMatF::Constant(n, k, kSentinel), uc(m, k), vc(n, k);
    std::vector<float> sg(static_cast<size_t>(k), kSentinel), sc(static_cast<size_t>(k));
    cu::rsvd(a.op(), o, mview(ug), sg.data(), mview(vg));
    el::rsvd(a.view(), o, mview(uc), sc.data(), mview(vc));
    const auto orthonormality = [](const RowMatF& q) {
      const RowMatD g = q.cast<double>().transpose() * q.cast<double>();
      return (g - RowMatD::Identity(g.rows(), g.cols())).cwiseAbs().maxCoeff();
    };
    double sMax = 0;
    for (const float x : sg) sMax = std::isnan(x) ? NAN : std::max(sMax, double(std::fabs(x)));
    recordAll(name,
              {{"s", sMax}, {"U^TU-I", orthonormality(ug)}, {"V^TV-I", orthonormality(vg)}, {"U-Ucpu", relErr(ug, uc)},
               {"V-Vcpu", relErr(vg, vc)}},
              1e-6);
  });
}

// --- finite differences --------------------------------------------------------------

// dL/dtheta for L = sum(G .* y(theta)) by central differences of GPU forwards, summed in
// double. y is linear in every single entry of A, B, x (alpha, beta, x for EigenLoRA), so
// the central difference is exact up to rounding, and a large step keeps the f32
// rounding of y (~1e-7 relative) at ~1e-6 of the gradient, far below the tolerance.
RowMatF finiteDifference(RowMatF& param, const std::function<double()>& loss) {
  constexpr float kStep = 0.5f;
  RowMatF grad(param.rows(), param.cols());
  for (Index i = 0; i < param.size(); ++i) {
    float& p = param.data()[i];
    const float old = p, up = old + kStep, down = old - kStep;
    p = up;
    const double lUp = loss();
    p = down;
    const double lDown = loss();
    p = old;
    grad.data()[i] = static_cast<float>((lUp - lDown) / (double(up) - double(down)));
  }
  return grad;
}

double dot(const RowMatF& g, const RowMatF& y) { return (g.cast<double>().array() * y.cast<double>().array()).sum(); }

constexpr double kFdTol = 1e-4;

void checkLoraGradients(el::Rng& rng) {
  const LayerShape s{"fd", 4, 6, 5, 3, 5, 4};
  LayerData d = makeLayer(rng, s);
  const RowMatF g = d.dy;  // dL/dy
  guarded("lora.backward/finite-difference", [&] {
    const auto layer = [&] {
      cu::LoraOperands l;
      l.a = cu::Operand::of(cview(d.a));
      l.b = cu::Operand::of(cview(d.b));
      l.scale = d.scale;
      l.weight = cu::Operand::of(cview(d.w));
      l.bias = d.bias.data();
      return l;
    };
    const auto loss = [&] {
      RowMatF y(s.n, s.dOut);
      cu::loraForward(cu::Operand::of(cview(d.x)), layer(), mview(y));
      return dot(g, y);
    };
    RowMatF dx(s.n, s.dIn), dA(s.r, s.dIn), dB(s.dOut, s.r);
    cu::loraBackward(cu::Operand::of(cview(d.x)), cu::Operand::of(cview(g)), layer(), mview(dx), mview(dA), mview(dB));
    const RowMatF fdA = finiteDifference(d.a, loss), fdB = finiteDifference(d.b, loss), fdx = finiteDifference(d.x, loss);
    recordAll("lora.backward/finite-difference", {{"dA", relErr(dA, fdA)}, {"dB", relErr(dB, fdB)}, {"dx", relErr(dx, fdx)}},
              kFdTol);
  });
}

void checkEigenLoraGradients(el::Rng& rng) {
  const LayerShape s{"fd", 3, 7, 6, 3, 5, 4};
  LayerData d = makeLayer(rng, s);
  const RowMatF g = d.dy;
  guarded("eigenLora.backward/finite-difference", [&] {
    const auto layer = [&] {
      cu::EigenLoraOperands l;
      l.componentsA = cu::Operand::of(cview(d.vA));
      l.alpha = cu::Operand::of(cview(d.alpha));
      l.beta = cu::Operand::of(cview(d.beta));
      l.componentsB = cu::Operand::of(cview(d.uB));
      l.scale = d.scale;
      l.weight = cu::Operand::of(cview(d.w));
      l.bias = d.bias.data();
      return l;
    };
    const auto loss = [&] {
      RowMatF y(s.n, s.dOut);
      cu::eigenLoraForward(cu::Operand::of(cview(d.x)), layer(), mview(y));
      return dot(g, y);
    };
    RowMatF dx(s.n, s.dIn), dAlpha(s.kA, s.r), dBeta(s.kB, s.r);
    cu::eigenLoraBackward(cu::Operand::of(cview(d.x)), cu::Operand::of(cview(g)), layer(), mview(dx), mview(dAlpha),
                          mview(dBeta));
    const RowMatF fdAlpha = finiteDifference(d.alpha, loss), fdBeta = finiteDifference(d.beta, loss),
                  fdx = finiteDifference(d.x, loss);
    recordAll("eigenLora.backward/finite-difference",
              {{"dAlpha", relErr(dAlpha, fdAlpha)}, {"dBeta", relErr(dBeta, fdBeta)}, {"dx", relErr(dx, fdx)}}, kFdTol);
  });
}

// --- bad inputs ----------------------------------------------------------------------

bool allSentinel(const RowMatF& m) { return (m.array() == kSentinel).all(); }

void checkBadInputs(el::Rng& rng) {
  const char* shape = el::code::kShapeMismatch;
  const char* invalid = el::code::kInvalidArgument;
  const LayerShape s{"bad", 5, 12, 10, 3, 4, 4};
  const LayerData d = makeLayer(rng, s);
  const RowMatF aWide = gaussian(rng, s.r, s.dIn + 1, 0.1);  // A with one column too many

  const auto lora = [&](const cu::Operand& a, const cu::Operand& w) {
    cu::LoraOperands l;
    l.a = a;
    l.b = cu::Operand::of(cview(d.b));
    l.weight = w;
    return l;
  };
  {
    RowMatF y = RowMatF::Constant(s.n, s.dOut, kSentinel);
    expectError("bad-input/lora.forward/A-cols-host", {shape},
                [&] { cu::loraForward(cu::Operand::of(cview(d.x)), lora(cu::Operand::of(cview(aWide)), {}), mview(y)); });
    record("bad-input/lora.forward/y-untouched", allSentinel(y) ? 0 : 1, 0, "y unchanged after the throw");
  }
  guarded("bad-input/lora.forward/A-cols-device", [&] {
    const Tensor a = stage(aWide, Storage::BF16);
    RowMatF y = RowMatF::Constant(s.n, s.dOut, kSentinel);
    expectError("bad-input/lora.forward/A-cols-device", {shape},
                [&] { cu::loraForward(cu::Operand::of(cview(d.x)), lora(a.op(), {}), mview(y)); });
    record("bad-input/lora.forward/y-untouched-device", allSentinel(y) ? 0 : 1, 0, "y unchanged after the throw");
  });
  guarded("bad-input/lora.forward/weight-device", [&] {
    const RowMatF wT = d.w.transpose();  // d_in x d_out instead of d_out x d_in
    const Tensor w = stage(wT, Storage::F32);
    RowMatF y(s.n, s.dOut);
    expectError("bad-input/lora.forward/weight-device", {shape},
                [&] { cu::loraForward(cu::Operand::of(cview(d.x)), lora(cu::Operand::of(cview(d.a)), w.op()), mview(y)); });
  });
  {
    RowMatF y(s.n + 1, s.dOut);
    expectError("bad-input/lora.forward/y-rows", {shape},
                [&] { cu::loraForward(cu::Operand::of(cview(d.x)), lora(cu::Operand::of(cview(d.a)), {}), mview(y)); });
  }
  {
    RowMatF y(s.n, s.dOut);
    expectError("bad-input/lora.forward/x-missing", {invalid, shape},
                [&] { cu::loraForward(cu::Operand{}, lora(cu::Operand::of(cview(d.a)), {}), mview(y)); });
  }
  {
    RowMatF dA(s.r, s.dIn + 1), dB(s.dOut, s.r);
    expectError("bad-input/lora.backward/dA-shape", {shape}, [&] {
      cu::loraBackward(cu::Operand::of(cview(d.x)), cu::Operand::of(cview(d.dy)), lora(cu::Operand::of(cview(d.a)), {}),
                       MatView{}, mview(dA), mview(dB));
    });
  }
  const auto eigen = [&](const RowMatF& alpha) {
    cu::EigenLoraOperands l;
    l.componentsA = cu::Operand::of(cview(d.vA));
    l.alpha = cu::Operand::of(cview(alpha));
    l.beta = cu::Operand::of(cview(d.beta));
    l.componentsB = cu::Operand::of(cview(d.uB));
    return l;
  };
  {
    const RowMatF alphaBad = gaussian(rng, s.kA + 1, s.r, 0.1);
    RowMatF y = RowMatF::Constant(s.n, s.dOut, kSentinel);
    expectError("bad-input/eigenLora.forward/alpha-shape", {shape},
                [&] { cu::eigenLoraForward(cu::Operand::of(cview(d.x)), eigen(alphaBad), mview(y)); });
    record("bad-input/eigenLora.forward/y-untouched", allSentinel(y) ? 0 : 1, 0, "y unchanged after the throw");
  }
  {
    RowMatF dAlpha(s.kA, s.r), dBeta(s.kB + 2, s.r);
    expectError("bad-input/eigenLora.backward/dBeta-shape", {shape}, [&] {
      cu::eigenLoraBackward(cu::Operand::of(cview(d.x)), cu::Operand::of(cview(d.dy)), eigen(d.alpha), MatView{},
                            mview(dAlpha), mview(dBeta));
    });
  }

  // Banks.
  const Index count = 3;
  const RowMatF mixing = gaussian(rng, count * s.kA, s.kB, 0.1), mixingShort = gaussian(rng, (count - 1) * s.kA, s.kB, 0.1);
  const auto eigenBank = [&](const RowMatF& m) {
    cu::EigenBankOperands b;
    b.componentsA = cu::Operand::of(cview(d.vA));
    b.componentsB = cu::Operand::of(cview(d.uB));
    b.mixing = cu::Operand::of(cview(m));
    b.count = count;
    return b;
  };
  std::vector<int32_t> rows(size_t(s.n), 0);
  {
    RowMatF y = RowMatF::Constant(s.n, s.dOut, kSentinel);
    rows[2] = int32_t(count);
    expectError("bad-input/eigenBank.apply/row-index-count", {invalid},
                [&] { cu::eigenBankApply(cu::Operand::of(cview(d.x)), eigenBank(mixing), rows.data(), {}, nullptr, mview(y)); });
    record("bad-input/eigenBank.apply/y-untouched", allSentinel(y) ? 0 : 1, 0, "y unchanged after the throw");
    rows[2] = -2;
    expectError("bad-input/eigenBank.apply/row-index-minus-2", {invalid},
                [&] { cu::eigenBankApply(cu::Operand::of(cview(d.x)), eigenBank(mixing), rows.data(), {}, nullptr, mview(y)); });
    rows[2] = 0;
    expectError("bad-input/eigenBank.apply/mixing-rows", {shape, invalid}, [&] {
      cu::eigenBankApply(cu::Operand::of(cview(d.x)), eigenBank(mixingShort), rows.data(), {}, nullptr, mview(y));
    });
  }
  {
    const RowMatF a0 = gaussian(rng, 2, s.dIn, 0.1), b0 = gaussian(rng, s.dOut, 2, 0.1), a1 = gaussian(rng, 4, s.dIn, 0.1),
                  b1Bad = gaussian(rng, s.dOut, 3, 0.1), b1 = gaussian(rng, s.dOut, 4, 0.1);
    const auto loraBank = [&](const RowMatF& secondB) {
      cu::LoraBankOperands b;
      b.a = {cu::Operand::of(cview(a0)), cu::Operand::of(cview(a1))};
      b.b = {cu::Operand::of(cview(b0)), cu::Operand::of(cview(secondB))};
      b.scales = {1.0f, 0.5f};
      return b;
    };
    RowMatF y = RowMatF::Constant(s.n, s.dOut, kSentinel);
    std::vector<int32_t> r2 = {0, 1, -1, 1, 0};
    expectError("bad-input/loraBank.apply/B-rank", {shape},
                [&] { cu::loraBankApply(cu::Operand::of(cview(d.x)), loraBank(b1Bad), r2.data(), {}, nullptr, mview(y)); });
    record("bad-input/loraBank.apply/y-untouched", allSentinel(y) ? 0 : 1, 0, "y unchanged after the throw");
    r2[4] = 2;
    expectError("bad-input/loraBank.apply/row-index-count", {invalid},
                [&] { cu::loraBankApply(cu::Operand::of(cview(d.x)), loraBank(b1), r2.data(), {}, nullptr, mview(y)); });
  }

  // rsvd arguments and non-finite input.
  const Index m = 90, n = 70, k = 5;
  const RowMatF a = gaussian(rng, m, n, 1.0);
  RowMatF u(m, k), v(n, k);
  std::vector<float> sv(static_cast<size_t>(k));
  el::RsvdOptions o;
  o.rank = k;
  o.oversample = 5;
  o.method = el::SvdMethod::Randomized;
  {
    el::RsvdOptions zero = o;
    zero.rank = 0;
    expectError("bad-input/rsvd/rank-0", {invalid},
                [&] { cu::rsvd(cu::Operand::of(cview(a)), zero, MatView{nullptr, m, 0}, sv.data(), MatView{nullptr, n, 0}); });
    RowMatF uBad(m, k + 1);
    expectError("bad-input/rsvd/U-shape", {shape},
                [&] { cu::rsvd(cu::Operand::of(cview(a)), o, mview(uBad), sv.data(), mview(v)); });
  }
  RowMatF aNan = a;
  aNan(17, 23) = NAN;
  expectError("bad-input/rsvd/nan-host", {el::code::kNonFinite},
              [&] { cu::rsvd(cu::Operand::of(cview(aNan)), o, mview(u), sv.data(), mview(v)); });
  guarded("bad-input/rsvd/inf-device-f32", [&] {
    RowMatF aInf = a;
    aInf(m - 1, n - 1) = INFINITY;
    const Tensor t = stage(aInf, Storage::F32);
    expectError("bad-input/rsvd/inf-device-f32", {el::code::kNonFinite},
                [&] { cu::rsvd(t.op(), o, mview(u), sv.data(), mview(v)); });
  });
  guarded("bad-input/rsvd/nan-device-bf16", [&] {
    const Tensor t = stage(aNan, Storage::BF16);
    expectError("bad-input/rsvd/nan-device-bf16", {el::code::kNonFinite},
                [&] { cu::rsvd(t.op(), o, mview(u), sv.data(), mview(v)); });
  });
  {
    el::RsvdOptions exact = o;
    exact.method = el::SvdMethod::Exact;
    expectError("bad-input/rsvd/nan-exact-path", {el::code::kNonFinite},
                [&] { cu::rsvd(cu::Operand::of(cview(aNan)), exact, mview(u), sv.data(), mview(v)); });
  }
  // A negative size must be refused as an argument error, not reach cudaMalloc as a huge
  // unsigned size.
  expectError("bad-input/allocate/negative-rows", {invalid, shape}, [&] {
    cu::DeviceMatrix dm = cu::allocate(-1, 4, cu::DType::F32);
    cu::release(dm);
  });
}

// After every error above the backend must still work.
void checkAfterErrors(el::Rng& rng) {
  const LayerShape s{"after", 9, 40, 30, 4, 8, 8};
  const LayerData d = makeLayer(rng, s);
  guarded("after-errors/lora.forward", [&] {
    const Tensor a = stage(d.a, Storage::F16), b = stage(d.b, Storage::F16);
    cu::LoraOperands g;
    g.a = a.op();
    g.b = b.op();
    g.scale = d.scale;
    g.weight = cu::Operand::of(cview(d.w));
    g.bias = d.bias.data();
    RowMatF yg(s.n, s.dOut), yc(s.n, s.dOut);
    cu::loraForward(cu::Operand::of(cview(d.x)), g, mview(yg));
    el::LoraLayer c;
    c.a = a.view();
    c.b = b.view();
    c.scale = d.scale;
    c.weight = cview(d.w);
    c.bias = d.bias.data();
    el::loraForward(cview(d.x), c, mview(yc));
    record("after-errors/lora.forward", relErr(yg, yc), tolF32(s.dIn));
  });
}

// --- concurrency ---------------------------------------------------------------------

// Operations called from several threads at once share the backend's scratch arena and
// cuBLAS handle; each must give the result it gives alone. The shapes differ so that the
// scratch each needs differs too.
void checkConcurrent(el::Rng& rng) {
  constexpr int kThreads = 4, kCalls = 25;
  struct Job {
    LayerShape s;
    LayerData d;
    RowMatF want;
  };
  std::vector<Job> jobs;
  for (Index t = 0; t < kThreads; ++t) {
    const LayerShape s{"concurrent", 40 + 24 * t, 96, 80, 4 + t, 8, 8};
    Job job{s, makeLayer(rng, s), RowMatF(s.n, s.dOut)};
    el::LoraLayer c;
    c.a = cview(job.d.a);
    c.b = cview(job.d.b);
    c.scale = job.d.scale;
    c.weight = cview(job.d.w);
    c.bias = job.d.bias.data();
    el::loraForward(cview(job.d.x), c, mview(job.want));
    jobs.push_back(std::move(job));
  }
  std::atomic<int> wrong{0}, threw{0};
  std::vector<std::thread> pool;
  for (const Job& job : jobs) {
    pool.emplace_back([&job, &wrong, &threw] {
      cu::LoraOperands g;
      g.a = cu::Operand::of(cview(job.d.a));
      g.b = cu::Operand::of(cview(job.d.b));
      g.scale = job.d.scale;
      g.weight = cu::Operand::of(cview(job.d.w));
      g.bias = job.d.bias.data();
      for (int call = 0; call < kCalls; ++call) {
        RowMatF y(job.s.n, job.s.dOut);
        try {
          cu::loraForward(cu::Operand::of(cview(job.d.x)), g, mview(y));
          if (!(relErr(y, job.want) <= tolF32(job.s.dIn))) ++wrong;
        } catch (const std::exception&) {
          ++threw;
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  record("concurrent/lora.forward", wrong + threw, 0,
         fmt("%.0f wrong results and %.0f exceptions in %.0f calls from %.0f threads", wrong, threw,
             kThreads * kCalls, kThreads));
}

// --- output --------------------------------------------------------------------------

std::string jsonString(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string jsonNumber(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

bool writeJson(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.close();
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    return false;
  }
  return true;
}

std::string versionString(int v) {
  // CUDA encodes 1000 * major + 10 * minor.
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

int usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [--seed N] [--json PATH]\n", argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = static_cast<uint64_t>(std::time(nullptr));
  std::string jsonPath;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
      char* end = nullptr;
      seed = std::strtoull(argv[++i], &end, 10);
      if (end == argv[i] || *end != '\0') return usage(argv[0]);
    } else if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      jsonPath = argv[++i];
    } else {
      return usage(argv[0]);
    }
  }

  const cu::Availability availability = cu::probe();
  if (!availability.available) {
    std::printf("SKIP: %s\n", availability.reason.c_str());
    if (!jsonPath.empty()) {
      writeJson(jsonPath, "{\"skipped\":true,\"reason\":" + jsonString(availability.reason) + "}\n");
    }
    return kSkipStatus;
  }

  std::printf("# eigenlorax CUDA backend parity check\n");
  std::string device;
  for (const auto& dv : availability.devices) {
    std::printf("device %d    %s, compute %d.%d, %d SMs, %.1f GiB (%.1f free)\n", dv.index, dv.name.c_str(), dv.major,
                dv.minor, dv.multiprocessors, double(dv.totalBytes) / (1 << 30), double(dv.freeBytes) / (1 << 30));
    if (device.empty()) device = dv.name;
  }
  std::printf("cuda        runtime %s, driver %s, cuBLAS %d (%s)\n", versionString(availability.runtimeVersion).c_str(),
              versionString(availability.driverVersion).c_str(), availability.cublasVersion,
              availability.cublasLibrary.c_str());
  std::printf("seed        %llu (rerun with --seed %llu)\n\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  std::fflush(stdout);

  el::Rng rng(seed);
  try {
    checkRoundTrip(rng);

    const LayerShape layers[] = {
        {"n1", 1, 64, 48, 4, 8, 6},
        {"n33", 33, 70, 53, 6, 12, 9},  // odd sizes: strides and tails
        {"n256", 256, 512, 384, 16, 64, 48},
    };
    for (const auto& s : layers) checkLayers(rng, s);

    const BankShape banks[] = {
        {"n37", 37, 96, 80, 12, 10, 7, 0.2},
        {"n300", 300, 512, 384, 64, 48, 64, 0.1},
        {"one-adapter", 64, 128, 96, 16, 16, 1, 0.0},
        {"all-unassigned", 5, 64, 64, 8, 8, 3, 1.0},
    };
    for (const auto& s : banks) checkBanks(rng, s);

    using M = el::SvdMethod;
    const RsvdCase rsvds[] = {
        {"tall/host", 600, 400, 20, 10, 2, M::Auto, Storage::Host, true},
        {"tall/dev-f32", 600, 400, 20, 10, 2, M::Randomized, Storage::F32, true},
        {"tall/dev-f16", 600, 400, 20, 10, 2, M::Randomized, Storage::F16, false},
        {"wide/dev-f32", 300, 900, 20, 10, 2, M::Randomized, Storage::F32, true},
        {"wide/dev-bf16", 300, 900, 20, 10, 2, M::Randomized, Storage::BF16, false},
        {"q0/host", 500, 700, 16, 8, 0, M::Randomized, Storage::Host, false},
        {"p0/host", 400, 500, 12, 0, 2, M::Randomized, Storage::Host, false},
        {"large/dev-f32", 2000, 3000, 64, 16, 2, M::Randomized, Storage::F32, true},
        {"exact-auto/host", 60, 40, 10, 10, 2, M::Auto, Storage::Host, true},
        {"exact-auto/dev-bf16", 60, 40, 10, 10, 2, M::Auto, Storage::BF16, false},
        {"exact-forced/dev-f32", 200, 150, 12, 10, 2, M::Exact, Storage::F32, true},
        // Rank 14 below the sketch's 20 columns: a singular Gram matrix, the shifted pass.
        {"rank-deficient/dev-f32", 500, 400, 10, 10, 2, M::Randomized, Storage::F32, true, 14},
    };
    for (const auto& c : rsvds) checkRsvd(rng, c);
    checkRsvdZero();

    checkLoraGradients(rng);
    checkEigenLoraGradients(rng);
    checkBadInputs(rng);
    checkAfterErrors(rng);
    checkConcurrent(rng);
  } catch (const std::exception& e) {
    // Only the CPU side (allocation of a reference) can get here.
    recordFailure("run", std::string("aborted: ") + e.what());
  }

  size_t failed = 0;
  for (const auto& c : g_checks) failed += c.ok ? 0 : 1;
  std::printf("\nworkspace   %.1f MiB held by the backend\n", double(cu::workspaceBytes()) / (1 << 20));
  if (failed == 0) {
    std::printf("summary: all %zu checks passed (seed %llu)\n", g_checks.size(), static_cast<unsigned long long>(seed));
  } else {
    std::printf("summary: %zu of %zu checks FAILED (seed %llu):\n", failed, g_checks.size(),
                static_cast<unsigned long long>(seed));
    for (const auto& c : g_checks)
      if (!c.ok) std::printf("  %s\n", c.name.c_str());
  }

  if (!jsonPath.empty()) {
    std::ostringstream json;
    json << "{\"skipped\":false,\"seed\":" << seed << ",\"device\":" << jsonString(device)
         << ",\"passed\":" << g_checks.size() - failed << ",\"failed\":" << failed << ",\"checks\":[";
    for (size_t i = 0; i < g_checks.size(); ++i) {
      const auto& c = g_checks[i];
      json << (i ? "," : "") << "\n{\"name\":" << jsonString(c.name) << ",\"ok\":" << (c.ok ? "true" : "false")
           << ",\"err\":" << jsonNumber(c.err) << ",\"tol\":" << jsonNumber(c.tol) << ",\"note\":" << jsonString(c.note)
           << "}";
    }
    json << "]}\n";
    if (!writeJson(jsonPath, json.str())) return 1;
  }
  return failed == 0 ? 0 : 1;
}
