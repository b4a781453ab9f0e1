#include "multiadapter.h"

#include <string>

#include "lowrank.h"

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
                                                  std::to_string(count) + ") but received " +
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

void eigenBankApply(ConstMatView xv, const EigenAdapterBank& bank, const int32_t* rowAdapter, ConstMatView weight,
                    const float* bias, MatView yv) {
  checkEigenBankApply(xv, bank, rowAdapter, weight, yv);
  base(xv, weight, bias, yv);
  const Index n = xv.rows, kA = bank.componentsA.cols, kB = bank.componentsB.cols;
  const Groups groups = groupRows(rowAdapter, n, bank.count);
  if (groups.order.empty()) return;

  const ConstMapF x = xv.map();
  const RowMatF h = x * bank.componentsA.map();  // n x K_A, shared by the batch
  RowMatF t = RowMatF::Zero(n, kB);              // rows without an adapter stay 0
  // The grouped middle step: each adapter's rows times its K_A x K_B matrix.
#pragma omp parallel for schedule(dynamic)
  for (Index i = 0; i < bank.count; ++i) {
    const Index begin = groups.start[i], end = groups.start[i + 1];
    if (begin == end) continue;
    const ConstMapF m(bank.mixing + i * kA * kB, kA, kB);
    if (end - begin == 1) {
      const Index b = groups.order[begin];
      t.row(b).noalias() = h.row(b) * m;
      continue;
    }
    RowMatF hg(end - begin, kA);
    for (Index j = begin; j < end; ++j) hg.row(j - begin) = h.row(groups.order[j]);
    const RowMatF tg = hg * m;
    for (Index j = begin; j < end; ++j) t.row(groups.order[j]) = tg.row(j - begin);
  }
  MapF y = yv.map();
  y.noalias() += t * bank.componentsB.map().transpose();  // shared by the batch
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
