#include "multiadapter.h"

#include <Eigen/QR>
#include <algorithm>
#include <string>

#include "lowrank.h"
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

// A few distinct adapters: each M_i = s alpha_i beta_i^T has rank r_i <= min(K_A, K_B), so
// M_i = L_i R_i (K_A x r_i times r_i x K_B, from a column-pivoted QR of M_i that drops
// only the rounding-level tail) and the adapter is a LoRA pair A_i = V_A L_i, B_i = U_B R_i^T
// built for this call. Its rows then cost 2 r_i (d_in + d_out) per row plus the pair, instead of the shared
// path's K_A d_in + K_B d_out per row: about 3x fewer flops for one adapter of rank 16 on K = 64.
struct RankPair {
  RowMatF a;  // d_in x r
  RowMatF b;  // d_out x r
};

// The pairs when they cost less than the shared products, counting the pairs' flops
// twice: their rank-r products (n_i x d x r) run at about half the rate of the shared
// K-wide ones (measured on 4096 x 64 components, r = 16: one adapter for 256 rows takes
// half the time of the shared path, four interleaved ones the same time).
// Returns false (and no pairs) when the shared path is cheaper.
bool rankPairs(ConstMatView x, const EigenAdapterBank& bank, const int32_t* rowAdapter, std::vector<int32_t>& distinct,
               std::vector<RankPair>& pairs) {
  const Index n = x.rows, dIn = bank.componentsA.rows, dOut = bank.componentsB.rows, kA = bank.componentsA.cols,
              kB = bank.componentsB.cols;
  std::vector<Index> rowsOf(static_cast<size_t>(bank.count), 0);
  for (Index b = 0; b < n; ++b) {
    if (rowAdapter[b] >= 0 && rowsOf[static_cast<size_t>(rowAdapter[b])]++ == 0) distinct.push_back(rowAdapter[b]);
  }
  const double shared = static_cast<double>(n) * static_cast<double>(kA * dIn + kB * dOut);
  constexpr double kPairRate = 2;  // the shared products' rate over the pairs'
  const double pairCost = kPairRate * static_cast<double>(kA * dIn + kB * dOut);  // building a rank-1 pair
  const double rowCost = kPairRate * static_cast<double>(dIn + dOut);             // one row, rank 1
  double atRankOne = 0;
  for (const int32_t i : distinct) atRankOne += pairCost + rowCost * static_cast<double>(rowsOf[static_cast<size_t>(i)]);
  if (distinct.empty() || atRankOne >= shared) return false;

  std::vector<Index> ranks(distinct.size());
  std::vector<RowMatF> left(distinct.size()), right(distinct.size());
  double cost = 0;
  for (size_t j = 0; j < distinct.size(); ++j) {
    const ConstMapF m(bank.mixing + static_cast<Index>(distinct[j]) * kA * kB, kA, kB);
    const Eigen::ColPivHouseholderQR<ColMatF> qr(m);
    const Index r = std::max<Index>(1, qr.rank());
    ranks[j] = r;
    cost += static_cast<double>(r) * (pairCost + rowCost * static_cast<double>(rowsOf[static_cast<size_t>(distinct[j])]));
    if (cost >= shared) return false;
    // M P = Q R, so M = Q[:, :r] (R[:r, :] P^T) up to the dropped rounding-level rows of R.
    const ColMatF q = qr.householderQ() * ColMatF::Identity(kA, r);
    const ColMatF upper = qr.matrixR().topRows(r).triangularView<Eigen::Upper>();
    const ColMatF rp = upper * qr.colsPermutation().transpose();
    left[j] = q;
    right[j] = rp;
  }
  pairs.resize(distinct.size());
  const ConstMapF vA = bank.componentsA.map(), uB = bank.componentsB.map();
#pragma omp parallel for schedule(dynamic)
  for (Index j = 0; j < static_cast<Index>(2 * distinct.size()); ++j) {
    const size_t i = static_cast<size_t>(j / 2);
    if (j % 2 == 0) {
      pairs[i].a.noalias() = vA * left[i];
    } else {
      pairs[i].b.noalias() = uB * right[i].transpose();
    }
  }
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

// Rows with an adapter, in blocks of contiguous rows, one block per thread: each block runs
// the whole pipeline (x V_A, the grouped middle step, T U_B^T) on its own rows with
// single-threaded products, so the n x K intermediates stay in that core's cache and the
// threads never wait for each other between the three steps (two barrier-synchronised
// parallel products cost more than they save at these sizes). With no weight, y is
// written once by the last product instead of zeroed, read and written again.
void eigenBankApply(ConstMatView xv, const EigenAdapterBank& bank, const int32_t* rowAdapter, ConstMatView weight,
                    const float* bias, MatView yv) {
  checkEigenBankApply(xv, bank, rowAdapter, weight, yv);
  const Index n = xv.rows, dIn = xv.cols, kA = bank.componentsA.cols, kB = bank.componentsB.cols,
              dOut = bank.componentsB.rows;
  const bool withBase = !weight.empty();
  if (withBase) linearForward(xv, weight, bias, yv);
  const ConstMapF x = xv.map(), vA = bank.componentsA.map(), uB = bank.componentsB.map();
  MapF y = yv.map();

  std::vector<int32_t> distinct;
  std::vector<RankPair> pairs;
  const bool byPairs = rankPairs(xv, bank, rowAdapter, distinct, pairs);
  std::vector<Index> pairOf;
  if (byPairs) {
    pairOf.assign(static_cast<size_t>(bank.count), -1);
    for (size_t j = 0; j < distinct.size(); ++j) pairOf[static_cast<size_t>(distinct[j])] = static_cast<Index>(j);
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
      if (byPairs) {
        // Each adapter's rows of this block (contiguous rows use x and y in place). A block
        // that is one adapter's rows alone is written once; otherwise y starts at 0 (+ b).
        const bool single = used > 0 && used == rows && rowAdapter[order.front()] == rowAdapter[order.back()];
        const bool assign = single && !withBase && bias == nullptr;
        if (!withBase && !assign) {
          y.middleRows(begin, rows).setZero();
          if (bias != nullptr) {
            y.middleRows(begin, rows).rowwise() += Eigen::Map<const Eigen::Matrix<float, 1, Eigen::Dynamic>>(bias, dOut);
          }
        }
        RowMatF xg, z, yg;
        for (Index g0 = 0; g0 < used;) {
          const int32_t adapter = rowAdapter[order[static_cast<size_t>(g0)]];
          Index g1 = g0 + 1;
          while (g1 < used && rowAdapter[order[static_cast<size_t>(g1)]] == adapter) ++g1;
          const RankPair& pair = pairs[static_cast<size_t>(pairOf[static_cast<size_t>(adapter)])];
          const Index first = order[static_cast<size_t>(g0)], count = g1 - g0;
          const bool contiguous = order[static_cast<size_t>(g1 - 1)] - first == count - 1;
          if (contiguous) {
            z.noalias() = x.middleRows(first, count) * pair.a;
            if (assign) {
              y.middleRows(first, count).noalias() = z * pair.b.transpose();
            } else {
              y.middleRows(first, count).noalias() += z * pair.b.transpose();
            }
          } else {
            xg.resize(count, dIn);
            for (Index j = g0; j < g1; ++j) xg.row(j - g0) = x.row(order[static_cast<size_t>(j)]);
            z.noalias() = xg * pair.a;
            yg.noalias() = z * pair.b.transpose();
            for (Index j = g0; j < g1; ++j) y.row(order[static_cast<size_t>(j)]) += yg.row(j - g0);
          }
          g0 = g1;
        }
      } else {
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
}

void loraBankApply(ConstMatView xv, const LoraBank& bank, const int32_t* rowAdapter, ConstMatView weight,
                   const float* bias, MatView yv) {
  checkLoraBankApply(xv, bank, rowAdapter, weight, yv);
  base(xv, weight, bias, yv);
  const Index n = xv.rows, count = static_cast<Index>(bank.a.size());
  const Groups groups = groupRows(rowAdapter, n, count);
  const ConstMapF x = xv.map();
  MapF y = yv.map();
  // One segment per adapter: gather its rows, apply its own A_i and B_i, scatter back.
#pragma omp parallel for schedule(dynamic)
  for (Index i = 0; i < count; ++i) {
    const Index begin = groups.start[i], end = groups.start[i + 1];
    if (begin == end) continue;
    RowMatF xg(end - begin, x.cols());
    for (Index j = begin; j < end; ++j) xg.row(j - begin) = x.row(groups.order[j]);
    const RowMatF z = xg * bank.a[i].map().transpose();                       // g x r_i
    const RowMatF dy = bank.scales[i] * (z * bank.b[i].map().transpose());    // g x d_out
    for (Index j = begin; j < end; ++j) y.row(groups.order[j]) += dy.row(j - begin);
  }
}

}  // namespace eigenlorax
