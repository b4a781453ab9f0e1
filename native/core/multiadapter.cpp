#include "multiadapter.h"

#include <algorithm>
#include <string>

#include "lowrank.h"
#include "pair_cache.h"
#include "threads.h"

namespace eigenlorax {
namespace {

// Rows grouped by adapter: rows of adapter i are order[start[i] .. start[i + 1]).
struct Groups {
  std::vector<Index> start;
  std::vector<Index> order;
};

Groups groupRows(const int32_t* rowAdapter, Index rows, Index count) {
  Groups g;
  g.start.assign(static_cast<size_t>(count) + 1, 0);
  for (Index b = 0; b < rows; ++b) {
    if (rowAdapter[b] >= 0) ++g.start[static_cast<size_t>(rowAdapter[b]) + 1];
  }
  for (Index i = 0; i < count; ++i) g.start[i + 1] += g.start[i];
  g.order.resize(static_cast<size_t>(g.start[count]));
  std::vector<Index> next(g.start.begin(), g.start.end() - 1);
  for (Index b = 0; b < rows; ++b) {
    if (rowAdapter[b] >= 0) g.order[static_cast<size_t>(next[rowAdapter[b]]++)] = b;
  }
  return g;
}

void checkRows(const int32_t* rowAdapter, Index rows, Index count) {
  for (Index b = 0; b < rows; ++b) {
    if (rowAdapter[b] < -1 || rowAdapter[b] >= count) {
      throw CoreError(code::kInvalidArgument, "rows[" + std::to_string(b) + "]: expected an adapter index in [-1, " +
                                                  std::to_string(count) + "), received " +
                                                  std::to_string(rowAdapter[b]));
    }
  }
}

void base(const ConstMatView& x, ConstMatView weight, const float* bias, MatView y) {
  if (!weight.empty()) {
    linearForward(x, weight, bias, y);
  } else {
    MapF ym = y.map();
    ym.setZero();
    if (bias != nullptr) ym.rowwise() += Eigen::Map<const Eigen::Matrix<float, 1, Eigen::Dynamic>>(bias, ym.cols());
  }
}

// A few distinct adapters, each with many rows, go through their rank pairs (pair_cache.h)
// when those cost less than the shared products, counting the pairs' flops twice: their
// rank-r products (n_i x d x r) run at about half the rate of the shared K-wide ones
// (measured on 4096 x 64 components, r = 16: one adapter for 256 rows takes half the time
// of the shared path, four interleaved ones the same time). Building a pair is counted in
// full, or at 1 / kReuse with a cache that can hold every pair of the batch: a hot adapter's
// pair is then built once for many batches. The choice depends on the batch and the cache's
// budget only, never on what the cache holds, so a batch's result does not either; a batch
// whose pairs are all missing costs at most about kReuse times the shared path.
// Returns false (and no pairs) when the shared path is cheaper.
constexpr double kPairRate = 2;  // the shared products' rate over the pairs'
constexpr double kReuse = 8;

bool rankPairs(ConstMatView x, const EigenAdapterBank& bank, const int32_t* rowAdapter, PairCache* cache,
               std::vector<int32_t>& distinct, std::vector<std::shared_ptr<const RankPair>>& pairs) {
  const Index n = x.rows, dIn = bank.componentsA.rows, dOut = bank.componentsB.rows, kA = bank.componentsA.cols,
              kB = bank.componentsB.cols;
  std::vector<Index> rowsOf(static_cast<size_t>(bank.count), 0);
  for (Index b = 0; b < n; ++b) {
    if (rowAdapter[b] >= 0 && rowsOf[static_cast<size_t>(rowAdapter[b])]++ == 0) distinct.push_back(rowAdapter[b]);
  }
  const double shared = static_cast<double>(n) * static_cast<double>(kA * dIn + kB * dOut);
  const double pairCost = kPairRate * static_cast<double>(kA * dIn + kB * dOut);  // building a rank-1 pair
  const double rowCost = kPairRate * static_cast<double>(dIn + dOut);             // one row, rank 1
  // What the batch's pairs cost at rank one and (first) with builds shared across batches.
  auto costOf = [&](size_t j, Index rank, double buildShare) {
    return static_cast<double>(rank) *
           (pairCost * buildShare + rowCost * static_cast<double>(rowsOf[static_cast<size_t>(distinct[j])]));
  };
  const double share = cache != nullptr ? 1 / kReuse : 1;
  double atRankOne = 0;
  for (size_t j = 0; j < distinct.size(); ++j) atRankOne += costOf(j, 1, share);
  if (distinct.empty() || atRankOne >= shared) return false;

  // Each adapter's rank: the bank's (an upper bound given with the mixing matrices), else
  // its factorisation's (kept for the build), else its cached pair's.
  std::vector<Index> ranks(distinct.size());
  std::vector<std::shared_ptr<const RankPair>> found(distinct.size());
  std::vector<MixingFactors> factors(distinct.size());
  double cost = 0;
  size_t held = 0;
  for (size_t j = 0; j < distinct.size(); ++j) {
    const float* m = bank.mixing + static_cast<Index>(distinct[j]) * kA * kB;
    if (bank.ranks != nullptr) {
      ranks[j] = std::clamp<Index>(bank.ranks[distinct[j]], 1, std::min(kA, kB));
    } else {
      if (cache != nullptr) found[j] = cache->find(m);
      if (found[j] == nullptr) factors[j] = factorMixing(m, kA, kB);
      ranks[j] = found[j] != nullptr ? found[j]->a.cols() : factors[j].rank();
    }
    if (cache != nullptr) held += cache->entryBytes(ranks[j]);
    cost += costOf(j, ranks[j], share);
    if (cost >= shared) return false;
  }
  // Pairs the cache cannot hold all at once would be built again by the next batch.
  const bool keep = cache != nullptr && held <= cache->budget();
  if (cache != nullptr && !keep) {
    cost = 0;
    for (size_t j = 0; j < distinct.size(); ++j) cost += costOf(j, ranks[j], 1);
    if (cost >= shared) return false;
  }
  std::vector<size_t> missing;
  std::vector<MixingFactors> toBuild;
  for (size_t j = 0; j < distinct.size(); ++j) {
    const float* m = bank.mixing + static_cast<Index>(distinct[j]) * kA * kB;
    if (found[j] == nullptr && cache != nullptr && bank.ranks != nullptr) found[j] = cache->find(m);
    if (found[j] != nullptr) continue;
    missing.push_back(j);
    toBuild.push_back(factors[j].left.size() != 0 ? std::move(factors[j]) : factorMixing(m, kA, kB));
  }
  const std::vector<std::shared_ptr<const RankPair>> built = buildPairs(bank.componentsA, bank.componentsB, toBuild);
  for (size_t i = 0; i < missing.size(); ++i) {
    found[missing[i]] = built[i];
    if (keep) cache->insert(bank.mixing + static_cast<Index>(distinct[missing[i]]) * kA * kB, built[i]);
  }
  pairs = std::move(found);
  return true;
}

}  // namespace

void checkEigenBankApply(ConstMatView x, const EigenAdapterBank& bank, const int32_t* rowAdapter, ConstMatView weight,
                         MatView y) {
  const Index dIn = bank.componentsA.rows, dOut = bank.componentsB.rows;
  if (x.rows < 1) throw CoreError(code::kInvalidArgument, "x: expected at least one row");
  if (bank.componentsA.cols < 1 || bank.componentsB.cols < 1) {
    throw CoreError(code::kInvalidArgument, "components: expected at least one column on each side");
  }
  requireShape("x", x.rows, x.cols, x.rows, dIn);
  requireShape("y", y.rows, y.cols, x.rows, dOut);
  if (!weight.empty()) requireShape("weight", weight.rows, weight.cols, dOut, dIn);
  if (bank.count < 0) throw CoreError(code::kInvalidArgument, "count: expected a non-negative number of adapters");
  checkRows(rowAdapter, x.rows, bank.count);
  for (Index i = 0; bank.ranks != nullptr && i < bank.count; ++i) {
    if (bank.ranks[i] < 0) {
      throw CoreError(code::kInvalidArgument, "ranks[" + std::to_string(i) + "]: expected a rank >= 0, received " +
                                                  std::to_string(bank.ranks[i]));
    }
  }
}

void checkLoraBankApply(ConstMatView x, const LoraBank& bank, const int32_t* rowAdapter, ConstMatView weight,
                        MatView y) {
  if (x.rows < 1) throw CoreError(code::kInvalidArgument, "x: expected at least one row");
  const Index dIn = x.cols, dOut = y.cols;
  requireShape("y", y.rows, y.cols, x.rows, dOut);
  if (!weight.empty()) requireShape("weight", weight.rows, weight.cols, dOut, dIn);
  if (bank.b.size() != bank.a.size() || bank.scales.size() != bank.a.size()) {
    throw CoreError(code::kInvalidArgument, "adapters: " + std::to_string(bank.a.size()) + " A factors, " +
                                                std::to_string(bank.b.size()) + " B factors and " +
                                                std::to_string(bank.scales.size()) + " scales; expected one of each per adapter");
  }
  for (size_t i = 0; i < bank.a.size(); ++i) {
    const std::string name = "adapters[" + std::to_string(i) + "]";
    requireShape((name + ".A").c_str(), bank.a[i].rows, bank.a[i].cols, bank.a[i].rows, dIn);
    requireShape((name + ".B").c_str(), bank.b[i].rows, bank.b[i].cols, dOut, bank.a[i].rows);
  }
  checkRows(rowAdapter, x.rows, static_cast<Index>(bank.a.size()));
}

// Segments of a batch (Punica / S-LoRA's segmented step): the rows of each adapter used,
// as one task, or one per chunk of its rows when it has more than a thread's share (one
// adapter for the whole batch still uses every thread). Each task reads its adapter's
// factors once, gathers its rows (in place when contiguous) and writes them:
// y (+)= scale (x_g D_i) U_i^T, where D_i = down(i) is d_in x r and U_i = up(i) d_out x r.
// `add`: y already holds the base (or b); else the rows are assigned and b added.
template <typename Down, typename Up>
void applySegments(const ConstMapF& x, const Groups& groups, const std::vector<Index>& adapters, bool add,
                   const float* bias, MapF& y, Down down, Up up, const float* scales) {
  const Index n = x.rows(), dIn = x.cols(), dOut = y.cols();
  struct Task {
    Index adapter;
    Index begin, end;  // into groups.order
  };
  const Index chunk = std::max<Index>(16, (n + currentThreads() - 1) / std::max(1, currentThreads()));
  std::vector<Task> tasks;
  for (const Index i : adapters) {
    const Index begin = groups.start[static_cast<size_t>(i)], end = groups.start[static_cast<size_t>(i) + 1];
    for (Index b = begin; b < end; b += chunk) tasks.push_back({i, b, std::min(end, b + chunk)});
  }
  const auto biasRow = [&] { return Eigen::Map<const Eigen::Matrix<float, 1, Eigen::Dynamic>>(bias, dOut); };
#pragma omp parallel for schedule(dynamic) if (tasks.size() > 1)
  for (Index t = 0; t < static_cast<Index>(tasks.size()); ++t) {
    const Task& task = tasks[static_cast<size_t>(t)];
    const float scale = scales != nullptr ? scales[task.adapter] : 1.0F;
    const Index first = groups.order[static_cast<size_t>(task.begin)], rows = task.end - task.begin;
    RowMatF z, xg, yg;
    if (groups.order[static_cast<size_t>(task.end - 1)] - first == rows - 1) {  // contiguous rows
      z.noalias() = x.middleRows(first, rows) * down(task.adapter);
      auto target = y.middleRows(first, rows);
      if (add) {
        target.noalias() += scale * (z * up(task.adapter).transpose());
      } else {
        target.noalias() = scale * (z * up(task.adapter).transpose());
        if (bias != nullptr) target.rowwise() += biasRow();
      }
      continue;
    }
    xg.resize(rows, dIn);
    for (Index j = 0; j < rows; ++j) xg.row(j) = x.row(groups.order[static_cast<size_t>(task.begin + j)]);
    z.noalias() = xg * down(task.adapter);
    yg.noalias() = scale * (z * up(task.adapter).transpose());
    for (Index j = 0; j < rows; ++j) {
      const Index b = groups.order[static_cast<size_t>(task.begin + j)];
      if (add) y.row(b) += yg.row(j);
      else if (bias != nullptr) y.row(b) = yg.row(j) + biasRow();
      else y.row(b) = yg.row(j);
    }
  }
}

// The batch through its adapters' rank pairs. Rows of no adapter get b, or 0, or the base.
void applyPairs(const ConstMapF& x, const int32_t* rowAdapter, const std::vector<int32_t>& distinct,
                const std::vector<std::shared_ptr<const RankPair>>& pairs, Index count, bool withBase, const float* bias,
                MapF& y) {
  const Index n = x.rows();
  const Groups groups = groupRows(rowAdapter, n, count);
  if (!withBase && groups.order.size() < static_cast<size_t>(n)) {
    for (Index b = 0; b < n; ++b) {
      if (rowAdapter[b] >= 0) continue;
      if (bias != nullptr) y.row(b) = Eigen::Map<const Eigen::Matrix<float, 1, Eigen::Dynamic>>(bias, y.cols());
      else y.row(b).setZero();
    }
  }
  std::vector<const RankPair*> pairOf(static_cast<size_t>(count), nullptr);
  std::vector<Index> adapters;
  for (size_t j = 0; j < distinct.size(); ++j) {
    pairOf[static_cast<size_t>(distinct[j])] = pairs[j].get();
    adapters.push_back(distinct[j]);
  }
  applySegments(
      x, groups, adapters, withBase, bias, y, [&](Index i) -> const RowMatF& { return pairOf[static_cast<size_t>(i)]->a; },
      [&](Index i) -> const RowMatF& { return pairOf[static_cast<size_t>(i)]->b; }, nullptr);
}

// The shared path: rows with an adapter, in blocks of contiguous rows, one block per thread: each block runs
// the whole pipeline (x V_A, the grouped middle step, T U_B^T) on its own rows with
// single-threaded products, so the n x K intermediates stay in that core's cache and the
// threads never wait for each other between the three steps (two barrier-synchronised
// parallel products cost more than they save at these sizes). With no weight, y is
// written once by the last product instead of zeroed, read and written again.
void eigenBankApply(ConstMatView xv, const EigenAdapterBank& bank, const int32_t* rowAdapter, ConstMatView weight,
                    const float* bias, MatView yv, PairCache* cache) {
  checkEigenBankApply(xv, bank, rowAdapter, weight, yv);
  if (cache != nullptr && (bank.componentsA.data != cache->componentsA().data ||
                           bank.componentsB.data != cache->componentsB().data)) {
    throw CoreError(code::kInvalidArgument, "pairCache: a bank with a pair cache applies the cache's own components");
  }
  const Index n = xv.rows, dIn = xv.cols, kA = bank.componentsA.cols, kB = bank.componentsB.cols,
              dOut = bank.componentsB.rows;
  const bool withBase = !weight.empty();
  if (withBase) linearForward(xv, weight, bias, yv);
  const ConstMapF x = xv.map(), vA = bank.componentsA.map(), uB = bank.componentsB.map();
  MapF y = yv.map();

  std::vector<int32_t> distinct;
  std::vector<std::shared_ptr<const RankPair>> pairs;
  const bool byPairs = rankPairs(xv, bank, rowAdapter, cache, distinct, pairs);
  if (byPairs) {
    applyPairs(x, rowAdapter, distinct, pairs, bank.count, withBase, bias, y);
    return;
  }

  // Enough rows per thread that each one's products stay efficient (and a tiny batch runs
  // on the calling thread alone: no fork for a few microseconds of work).
  constexpr Index kRowsPerThread = 16;
  const double work = static_cast<double>(n) * static_cast<double>(kA * dIn + kB * dOut);
  const int threads = static_cast<int>(std::max<Index>(
      1, std::min<Index>(currentThreads(), work < 4e6 ? 1 : (n + kRowsPerThread - 1) / kRowsPerThread)));

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#ifdef _OPENMP
    const int self = omp_get_thread_num(), team = omp_get_num_threads();
#else
    const int self = 0, team = 1;
#endif
    const Index begin = n * self / team, end = n * (self + 1) / team, rows = end - begin;
    if (rows > 0) {
      // This block's rows that have an adapter, ordered by adapter (stable), so rows that
      // share an adapter form one small product with its mixing matrix.
      std::vector<Index> order;
      order.reserve(static_cast<size_t>(rows));
      for (Index b = begin; b < end; ++b) {
        if (rowAdapter[b] >= 0) order.push_back(b);
      }
      std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return rowAdapter[a] < rowAdapter[b]; });
      const Index used = static_cast<Index>(order.size());
      RowMatF t(rows, kB);
      if (used < rows) t.setZero();  // rows without an adapter add nothing
      if (used > 0) {
        // x V_A for the whole block when most rows have an adapter (no copy), else for the
        // gathered rows that do; h's rows follow the block's rows or `order` accordingly.
        const bool whole = 2 * used >= rows;
        RowMatF h, hg, tg;
        if (whole) {
          h.noalias() = x.middleRows(begin, rows) * vA;
        } else {
          RowMatF xg(used, dIn);
          for (Index j = 0; j < used; ++j) xg.row(j) = x.row(order[static_cast<size_t>(j)]);
          h.noalias() = xg * vA;
        }
        auto hRow = [&](Index j) { return whole ? order[static_cast<size_t>(j)] - begin : j; };
        for (Index g0 = 0; g0 < used;) {
          const int32_t adapter = rowAdapter[order[static_cast<size_t>(g0)]];
          Index g1 = g0 + 1;
          while (g1 < used && rowAdapter[order[static_cast<size_t>(g1)]] == adapter) ++g1;
          const ConstMapF m(bank.mixing + static_cast<Index>(adapter) * kA * kB, kA, kB);
          if (g1 - g0 == 1) {
            t.row(order[static_cast<size_t>(g0)] - begin).noalias() = h.row(hRow(g0)) * m;
          } else {
            hg.resize(g1 - g0, kA);
            for (Index j = g0; j < g1; ++j) hg.row(j - g0) = h.row(hRow(j));
            tg.noalias() = hg * m;
            for (Index j = g0; j < g1; ++j) t.row(order[static_cast<size_t>(j)] - begin) = tg.row(j - g0);
          }
          g0 = g1;
        }
      }
      auto yBlock = y.middleRows(begin, rows);
      if (withBase) {
        if (used > 0) yBlock.noalias() += t * uB.transpose();
      } else {
        yBlock.noalias() = t * uB.transpose();
        if (bias != nullptr) yBlock.rowwise() += Eigen::Map<const Eigen::Matrix<float, 1, Eigen::Dynamic>>(bias, dOut);
      }
    }
  }
}

void loraBankApply(ConstMatView xv, const LoraBank& bank, const int32_t* rowAdapter, ConstMatView weight,
                   const float* bias, MatView yv) {
  checkLoraBankApply(xv, bank, rowAdapter, weight, yv);
  base(xv, weight, bias, yv);
  const Index n = xv.rows, count = static_cast<Index>(bank.a.size());
  const Groups groups = groupRows(rowAdapter, n, count);
  const ConstMapF x = xv.map();
  MapF y = yv.map();
  std::vector<Index> adapters;
  for (Index i = 0; i < count; ++i) {
    if (groups.start[static_cast<size_t>(i)] < groups.start[static_cast<size_t>(i) + 1]) adapters.push_back(i);
  }
  applySegments(
      x, groups, adapters, true, nullptr, y, [&](Index i) { return bank.a[static_cast<size_t>(i)].map().transpose(); },
      [&](Index i) { return bank.b[static_cast<size_t>(i)].map(); }, bank.scales.data());
}

}  // namespace eigenlorax
