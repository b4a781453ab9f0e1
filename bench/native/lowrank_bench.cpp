// EigenLoRA layer benchmark on the C++ core (no Node): base product, our fused layer and
// the reference implementation's formulation, for d_in = d_out = 4096, K = 64, r = 16 and
// n = 1, 16, 256 tokens. Built by `npm run bench:lowrank` (CMake target
// eigenlorax_bench_lowrank); prints tables and ratios, never passes or fails on time.
//
//   eigenlorax_bench_lowrank [--json PATH] [--rounds-scale X]
//
// What is timed (medians over rounds that interleave the contenders, after one warm-up
// round; calls under 20 ms run as bursts of back-to-back calls so that they measure warm
// threads and caches):
//   base        y = x W^T through eigenlorax::loraForward with a rank-1 adapter: the same
//               baseForward code (and threading) eigenLoraForward uses; the rank-1 part
//               adds 2 n (d_in + d_out) flops, < 0.1% of the product.
//   base Eigen  y.noalias() = x * W^T, a plain Eigen product (for n < 4 Eigen runs it as a
//               single-threaded GEMV; the core splits those columns across threads).
//   ours        eigenlorax::eigenLoraForward with W, order Auto.
//   ours adapter only / project / rebuild: the same without W (y = adapter delta).
//   reference   the EigenLoRAx reference code's forward: A and B rebuilt on every call by
//               a broadcast multiply-and-sum over an r x d x K temporary, then applied as
//               a LoRA pair, y = x W^T + s (x A^T) B^T (the applies through loraForward,
//               i.e. the same Eigen products and base path as ours).
#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/lowrank.h"
#include "core/random.h"
#include "core/threads.h"
#include "table.h"

namespace {

using eigenlorax::bench::fmt;
using eigenlorax::bench::printTable;

using eigenlorax::ConstMatView;
using eigenlorax::Index;
using eigenlorax::MatView;
using eigenlorax::RowMatF;

constexpr Index kDIn = 4096;
constexpr Index kDOut = 4096;
constexpr Index kComponents = 64;  // K_A = K_B = K
constexpr Index kRank = 16;        // r
constexpr float kScale = 1.0f;     // the reference code has no scale; 1 keeps both equal
constexpr double kBurstSeconds = 0.02;
constexpr int kMaxBurst = 20;

RowMatF gaussian(Index rows, Index cols, uint64_t seed, float scale) {
  RowMatF m(rows, cols);
  eigenlorax::Rng rng(seed);
  rng.fillGaussian(m.data(), m.size());
  m *= scale;
  return m;
}

ConstMatView cview(const RowMatF& m) { return {m.data(), m.rows(), m.cols()}; }
MatView mview(RowMatF& m) { return {m.data(), m.rows(), m.cols()}; }

// The reference's rebuild of one factor, as PyTorch evaluates
//   torch.sum(components.unsqueeze(0) * loadings.t().unsqueeze(1), dim=-1)
// components: d x K, loadings: K x r. The broadcast product materialises tmp[r][d][K]
// (a fresh allocation per call, like a new tensor), then a second pass sums over K.
// out(i, j) = sum_k tmp[i][j][k] is written as r x d (transposed = true: d x r).
void referenceRebuild(const RowMatF& components, const RowMatF& loadings, RowMatF& out, bool transposed) {
  const Index d = components.rows(), kk = components.cols(), r = loadings.cols();
  std::unique_ptr<float[]> tmp(new float[static_cast<size_t>(r * d * kk)]);
  float* t = tmp.get();
  const float* c = components.data();
  const float* l = loadings.data();
#pragma omp parallel for collapse(2) schedule(static)
  for (Index i = 0; i < r; ++i) {
    for (Index j = 0; j < d; ++j) {
      float* row = t + (i * d + j) * kk;
      const float* comp = c + j * kk;
      for (Index k = 0; k < kk; ++k) row[k] = comp[k] * l[k * r + i];
    }
  }
#pragma omp parallel for collapse(2) schedule(static)
  for (Index i = 0; i < r; ++i) {
    for (Index j = 0; j < d; ++j) {
      const float* row = t + (i * d + j) * kk;
      float sum = 0.0f;
      for (Index k = 0; k < kk; ++k) sum += row[k];
      if (transposed) out(j, i) = sum;
      else out(i, j) = sum;
    }
  }
}

struct Problem {
  RowMatF x, w, vA, alpha, beta, uB;
  RowMatF rank1A, rank1B;  // the rank-1 adapter that turns loraForward into "base"
  RowMatF refA, refB;      // the reference's rebuilt factors (r x d_in, d_out x r)
  RowMatF y;
};

eigenlorax::EigenLoraLayer oursLayer(const Problem& p, bool withWeight) {
  eigenlorax::EigenLoraLayer l;
  l.componentsA = cview(p.vA);
  l.alpha = cview(p.alpha);
  l.beta = cview(p.beta);
  l.componentsB = cview(p.uB);
  l.scale = kScale;
  if (withWeight) l.weight = cview(p.w);
  return l;
}

void referenceForward(Problem& p, bool withWeight) {
  referenceRebuild(p.vA, p.alpha, p.refA, false);  // A: r x d_in
  referenceRebuild(p.uB, p.beta, p.refB, true);    // B: d_out x r
  eigenlorax::LoraLayer l;
  l.a = cview(p.refA);
  l.b = cview(p.refB);
  l.scale = kScale;
  if (withWeight) l.weight = cview(p.w);
  eigenlorax::loraForward(cview(p.x), l, mview(p.y));
}

void baseForward(Problem& p) {
  eigenlorax::LoraLayer l;
  l.a = cview(p.rank1A);
  l.b = cview(p.rank1B);
  l.weight = cview(p.w);
  eigenlorax::loraForward(cview(p.x), l, mview(p.y));
}

double maxRelativeDifference(const RowMatF& a, const RowMatF& b) {
  return (a - b).cwiseAbs().maxCoeff() / std::max(b.cwiseAbs().maxCoeff(), 1e-30f);
}

double medianOf(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t mid = v.size() / 2;
  return v.size() % 2 ? v[mid] : 0.5 * (v[mid - 1] + v[mid]);
}

double seconds(const std::function<void()>& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string cpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

std::string fmtMs(double s) {
  char buf[32];
  const double v = s * 1e3;
  std::snprintf(buf, sizeof buf, v >= 100 ? "%.0f" : v >= 10 ? "%.1f" : v >= 1 ? "%.2f" : "%.3f", v);
  return buf;
}

struct Result {
  Index n = 0;
  int rounds = 0;
  std::string order;
  double base = 0, baseEigen = 0, ours = 0, oursAdapter = 0, oursProject = 0, oursRebuild = 0;
  double ref = 0, refAdapter = 0, diffLayer = 0, diffAdapter = 0;
  double oursMinusBase = 0, refMinusBase = 0;  // paired, per round
  int calls = 0;                               // timed adapter-only calls
};

Result run(Index n, int rounds) {
  Problem p;
  // Components with orthonormal-ish columns and O(1) loadings; values do not change the work.
  p.x = gaussian(n, kDIn, 11 + n, 1.0f);
  p.w = gaussian(kDOut, kDIn, 12, 1.0f / std::sqrt(float(kDIn)));
  p.vA = gaussian(kDIn, kComponents, 13, 1.0f / std::sqrt(float(kDIn)));
  p.alpha = gaussian(kComponents, kRank, 14, 1.0f);
  p.beta = gaussian(kComponents, kRank, 15, 1.0f);
  p.uB = gaussian(kDOut, kComponents, 16, 1.0f / std::sqrt(float(kDOut)));
  p.rank1A = RowMatF::Zero(1, kDIn);
  p.rank1B = RowMatF::Zero(kDOut, 1);
  p.refA.resize(kRank, kDIn);
  p.refB.resize(kDOut, kRank);
  p.y.resize(n, kDOut);

  Result r;
  r.n = n;
  r.rounds = rounds;

  // Equal work: ours and the reference must produce the same y.
  const auto layerW = oursLayer(p, true), layerNoW = oursLayer(p, false);
  const auto chosen = eigenlorax::eigenLoraForward(cview(p.x), layerW, mview(p.y), eigenlorax::ProductOrder::Auto);
  r.order = chosen == eigenlorax::ProductOrder::Rebuild ? "rebuild" : "project";
  const RowMatF oursY = p.y;
  referenceForward(p, true);
  r.diffLayer = maxRelativeDifference(oursY, p.y);
  eigenlorax::eigenLoraForward(cview(p.x), layerNoW, mview(p.y), eigenlorax::ProductOrder::Auto);
  const RowMatF oursDelta = p.y;
  referenceForward(p, false);
  r.diffAdapter = maxRelativeDifference(oursDelta, p.y);

  struct Task {
    const char* name;
    std::function<void()> fn;
    int burst = 1;
    std::vector<double> times;        // every timed call
    std::vector<double> roundMedians; // one value per round, for paired differences
  };
  // base, ours and ref stay neighbours in both directions of the alternating order.
  const auto ours = [&](const eigenlorax::EigenLoraLayer& layer, eigenlorax::ProductOrder order) {
    return [&p, &layer, order] { eigenlorax::eigenLoraForward(cview(p.x), layer, mview(p.y), order); };
  };
  std::vector<Task> tasks;
  const auto add = [&](const char* name, std::function<void()> fn) { tasks.push_back(Task{name, std::move(fn), 1, {}, {}}); };
  add("base", [&] { baseForward(p); });
  add("ours", ours(layerW, eigenlorax::ProductOrder::Auto));
  add("ref", [&] { referenceForward(p, true); });
  add("baseEigen", [&] { p.y.noalias() = p.x * p.w.transpose(); });
  add("oursAdapter", ours(layerNoW, eigenlorax::ProductOrder::Auto));
  add("oursProject", ours(layerNoW, eigenlorax::ProductOrder::Project));
  add("oursRebuild", ours(layerNoW, eigenlorax::ProductOrder::Rebuild));
  add("refAdapter", [&] { referenceForward(p, false); });

  // Warm-up round; it also sizes the bursts: calls shorter than kBurstSeconds run
  // back to back (one untimed call first) so that each measures the routine with warm
  // threads and caches, not the wake-up after the previous contender.
  for (auto& t : tasks) {
    const double first = seconds(t.fn);
    t.burst = first < kBurstSeconds ? std::min(kMaxBurst, int(std::ceil(kBurstSeconds / first))) : 1;
  }
  for (int round = 0; round < rounds; ++round) {
    // Alternate the order so no contender always follows the same one.
    for (size_t i = 0; i < tasks.size(); ++i) {
      Task& t = tasks[round % 2 == 0 ? i : tasks.size() - 1 - i];
      if (t.burst > 1) t.fn();
      std::vector<double> burst;
      for (int b = 0; b < t.burst; ++b) burst.push_back(seconds(t.fn));
      t.times.insert(t.times.end(), burst.begin(), burst.end());
      t.roundMedians.push_back(medianOf(burst));
    }
  }
  auto find = [&](const char* name) -> Task& {
    for (auto& t : tasks)
      if (std::strcmp(t.name, name) == 0) return t;
    throw std::logic_error(name);
  };
  auto med = [&](const char* name) { return medianOf(find(name).times); };
  // Median over rounds of (a - b) measured side by side in the same round.
  auto pairedDifference = [&](const char* a, const char* b) {
    const auto &ta = find(a).roundMedians, &tb = find(b).roundMedians;
    std::vector<double> d;
    for (size_t i = 0; i < ta.size(); ++i) d.push_back(ta[i] - tb[i]);
    return medianOf(d);
  };
  r.base = med("base");
  r.baseEigen = med("baseEigen");
  r.ours = med("ours");
  r.ref = med("ref");
  r.oursAdapter = med("oursAdapter");
  r.oursProject = med("oursProject");
  r.oursRebuild = med("oursRebuild");
  r.refAdapter = med("refAdapter");
  r.oursMinusBase = pairedDifference("ours", "base");
  r.refMinusBase = pairedDifference("ref", "base");
  r.calls = int(find("oursAdapter").times.size());
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string jsonPath;
  double roundsScale = 1.0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) jsonPath = argv[++i];
    else if (std::strcmp(argv[i], "--rounds-scale") == 0 && i + 1 < argc) roundsScale = std::atof(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--json PATH] [--rounds-scale X]\n", argv[0]);
      return 2;
    }
  }

  const int threads = eigenlorax::hardwareThreads();
  eigenlorax::useThreads(threads);  // omp_set_num_threads(all cores)

  char date[64];
  const std::time_t t = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  std::printf("# eigenlorax low-rank layer benchmark (C++ core, no Node)\n");
  std::printf("date        %s\n", date);
  std::printf("cpu         %s, %d logical cores\n", cpuModel().c_str(), threads);
  std::printf("threads     OpenMP %s, omp_set_num_threads(%d) = all cores; Eigen sees %d\n",
              eigenlorax::haveOpenMP() ? "on" : "off (single-threaded build)", threads, Eigen::nbThreads());
  std::printf("compiler    %s, Eigen %d.%d.%d, SIMD %s\n", __VERSION__, EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION,
              EIGEN_MINOR_VERSION, Eigen::SimdInstructionSetsInUse());
  std::printf("layer       d_in = d_out = %ld, K_A = K_B = %ld, r = %ld, scale %.0f, float32\n", long(kDIn), long(kComponents),
              long(kRank), double(kScale));
  std::printf("timing      contenders interleaved round by round (order alternating) after a warm-up round;\n"
              "            calls under %.0f ms run as bursts of back-to-back calls (one untimed first); medians\n\n",
              kBurstSeconds * 1e3);

  const std::vector<std::pair<Index, int>> cases = {{1, 30}, {16, 20}, {256, 15}};
  std::vector<Result> results;
  for (const auto& [n, rounds] : cases) {
    std::fprintf(stderr, "  n = %ld ...\n", long(n));
    results.push_back(run(n, std::max(3, int(std::lround(rounds * roundsScale)))));
  }

  std::printf("## Whole layer y = x W^T + s ((x V_A) alpha) beta^T U_B^T (ms, median)\n");
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : results) {
    rows.push_back({std::to_string(r.n), std::to_string(r.rounds), fmtMs(r.base), fmtMs(r.baseEigen), fmtMs(r.ours), r.order,
                    fmt("%+.1f%%", 100 * r.oursMinusBase / r.base), fmt("%.1f%%", 100 * r.oursAdapter / r.base),
                    fmtMs(r.ref), fmt("%.2fx", r.ref / r.ours), fmt("%.1e", r.diffLayer)});
  }
  printTable({"n", "rounds", "base", "base Eigen", "ours", "order", "overhead", "adapter/base", "reference", "ref/ours",
              "max rel diff y"},
             rows);
  std::printf(
      "base = loraForward with W and a rank-1 adapter (the core's base path); base Eigen = plain x * W^T.\n"
      "overhead = median over rounds of (ours - base), measured side by side, / base;\n"
      "adapter/base = ours without W (adapter part alone, below) / base. ref/ours > 1: ours is faster.\n"
      "max rel diff y = max |y_ours - y_ref| / max |y_ref| (same work).\n\n");

  std::printf("## Adapter part alone (ms, median)\n");
  rows.clear();
  for (const auto& r : results) {
    rows.push_back({std::to_string(r.n), std::to_string(r.calls), fmtMs(r.oursAdapter), r.order, fmtMs(r.oursProject),
                    fmtMs(r.oursRebuild), fmtMs(r.refAdapter), fmt("%.1fx", r.refAdapter / r.oursAdapter),
                    fmtMs(r.oursMinusBase), fmtMs(r.refMinusBase), fmt("%.1fx", r.refMinusBase / r.oursMinusBase),
                    fmt("%.1e", r.diffAdapter)});
  }
  printTable({"n", "calls", "ours", "auto order", "project", "rebuild", "reference", "ref/ours", "ours - base",
              "ref - base", "ratio", "max rel diff"},
             rows);
  std::printf(
      "ours / project / rebuild = eigenLoraForward without W (y = adapter delta) in auto / forced orders.\n"
      "reference = broadcast rebuild of A and B (r x d x K temporaries) + loraForward without W.\n"
      "ours - base, ref - base: the adapter inside the whole layer, paired per round (noisy where it is\n"
      "small next to the base product: a few percent of base is within run-to-run noise); ratio = their quotient.\n\n");

  std::printf("## Targets\n");
  for (const auto& r : results) {
    if (r.n != 256) continue;
    const double overhead = r.oursMinusBase / r.base;
    std::printf("adapter overhead at n = 256: %+.1f%% of the base product (target <= 10%%): %s"
                " (adapter alone: %.1f%% of base)\n",
                100 * overhead, overhead <= 0.10 ? "MET" : "NOT MET", 100 * r.oursAdapter / r.base);
  }
  for (const auto& r : results) {
    const double adapter = r.refAdapter / r.oursAdapter, layer = r.ref / r.ours;
    std::printf("n = %3ld: speed-up over the reference, adapter part %.1fx, whole layer %.2fx (target >= 5x): adapter %s, layer %s\n",
                long(r.n), adapter, layer, adapter >= 5 ? "MET" : "NOT MET", layer >= 5 ? "MET" : "NOT MET");
  }

  if (!jsonPath.empty()) {
    std::ostringstream json;
    json << "{\"threads\":" << threads << ",\"results\":[";
    for (size_t i = 0; i < results.size(); ++i) {
      const auto& r = results[i];
      json << (i ? "," : "") << "{\"n\":" << r.n << ",\"order\":\"" << r.order << "\",\"base\":" << r.base
           << ",\"ours\":" << r.ours << ",\"oursAdapter\":" << r.oursAdapter << ",\"ref\":" << r.ref
           << ",\"refAdapter\":" << r.refAdapter << "}";
    }
    json << "]}\n";
    std::ofstream(jsonPath) << json.str();
  }
  return 0;
}
