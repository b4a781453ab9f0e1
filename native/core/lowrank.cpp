#include "lowrank.h"

#include <string>
#include <utility>

#include "threads.h"

namespace eigenlorax {
namespace {

using RowVecF = Eigen::Matrix<float, 1, Eigen::Dynamic>;

// dst (=|+=) alpha * lhs * rhs. With several threads, each computes a contiguous block of
// dst's columns (or of its rows, when dst has more rows or too few columns to split) as a
// single-threaded Eigen product, with no barrier between the threads: a column block reads
// all of lhs, a row block all of rhs, so the split reads the smaller operand twice. Eigen's
// parallel GEMM shares packed blocks between the threads and synchronises on each: the
// training step's products, 2 threads, C++ driver: 128 x 784 x 256 241-295 -> 200-210 us,
// 128 x 256 x 256 91-98 -> 67-71 us, 128 x 256 x 10 12 -> 7-8 us.
constexpr Index kMinRowsPerThread = 16;
constexpr Index kMinColsPerThread = 32;

template <typename Dst, typename Lhs, typename Rhs>
void product(Dst&& dst, const Lhs& lhs, const Rhs& rhs, float alpha, bool accumulate) {
  const auto run = [&](auto&& d, const auto& l, const auto& r) {
    if (accumulate) d.noalias() += alpha * l * r;
    else d.noalias() = alpha * l * r;
  };
  const Index rows = dst.rows(), cols = dst.cols();
  const bool threaded = currentThreads() > 1;
  if (threaded && cols >= rows && cols >= 2 * kMinColsPerThread) {
    perThreadRanges(cols, kMinColsPerThread, [&](Index c0, Index c1) {
      run(dst.middleCols(c0, c1 - c0), lhs, rhs.middleCols(c0, c1 - c0));
    });
  } else if (threaded && rows >= 2 * kMinRowsPerThread) {
    perThreadRanges(rows, kMinRowsPerThread, [&](Index r0, Index r1) {
      run(dst.middleRows(r0, r1 - r0), lhs.middleRows(r0, r1 - r0), rhs);
    });
  } else {
    run(dst, lhs, rhs);
  }
}

// A new n x m product lhs * rhs (scaled), computed as product() does.
template <typename Lhs, typename Rhs>
RowMatF productOf(const Lhs& lhs, const Rhs& rhs, float alpha = 1.0f) {
  RowMatF out(lhs.rows(), rhs.cols());
  product(out, lhs, rhs, alpha, false);
  return out;
}

// Whether `saved` holds a forward's products for a backward of `order` (Auto: LoRA) at this
// thread count.
bool reusable(const SavedProducts* saved, ProductOrder order) {
  return saved != nullptr && saved->threads == currentThreads() && saved->order == order;
}

// y = x W^T + b, or y = 0 without a base layer.
void baseForward(const ConstMapF& x, ConstMatView weight, const float* bias, MapF& y) {
  if (!weight.empty()) product(y, x, weight.map().transpose(), 1.0f, false);
  else y.setZero();
  if (bias != nullptr) y.rowwise() += Eigen::Map<const RowVecF>(bias, y.cols());
}

// dx = dy W, or dx = 0 without a base layer.
void baseBackward(const ConstMapF& dy, ConstMatView weight, MapF& dx) {
  if (!weight.empty()) product(dx, dy, weight.map(), 1.0f, false);
  else dx.setZero();
}

void requirePositive(const char* name, Index value) {
  if (value < 1) throw CoreError(code::kInvalidArgument, std::string(name) + ": expected at least 1, received " + std::to_string(value));
}

void checkBase(ConstMatView weight, Index dOut, Index dIn) {
  if (!weight.empty()) requireShape("weight", weight.rows, weight.cols, dOut, dIn);
}

void checkLora(ConstMatView x, const LoraLayer& layer, const char* outName, Index outRows, Index outCols) {
  const Index n = x.rows, dIn = x.cols, r = layer.a.rows, dOut = layer.b.rows;
  requirePositive("x rows", n);
  requirePositive("x cols (d_in)", dIn);
  requirePositive("A rows (rank)", r);
  requirePositive("B rows (d_out)", dOut);
  requireShape("A", layer.a.rows, layer.a.cols, r, dIn);
  requireShape("B", layer.b.rows, layer.b.cols, dOut, r);
  checkBase(layer.weight, dOut, dIn);
  requireShape(outName, outRows, outCols, n, dOut);
}

void checkEigenLora(ConstMatView x, const EigenLoraLayer& l) {
  const Index dIn = x.cols, kA = l.componentsA.cols, kB = l.componentsB.cols, r = l.alpha.cols,
              dOut = l.componentsB.rows;
  requirePositive("x rows", x.rows);
  requirePositive("x cols (d_in)", dIn);
  requirePositive("componentsA cols (K_A)", kA);
  requirePositive("componentsB cols (K_B)", kB);
  requirePositive("alpha cols (rank)", r);
  requirePositive("componentsB rows (d_out)", dOut);
  requireShape("componentsA", l.componentsA.rows, l.componentsA.cols, dIn, kA);
  requireShape("alpha", l.alpha.rows, l.alpha.cols, kA, r);
  requireShape("beta", l.beta.rows, l.beta.cols, kB, r);
  checkBase(l.weight, dOut, dIn);
}

}  // namespace

void checkLoraForward(ConstMatView x, const LoraLayer& layer, ConstMatView y) {
  checkLora(x, layer, "y", y.rows, y.cols);
}

void checkLoraBackward(ConstMatView x, ConstMatView dy, const LoraLayer& layer, ConstMatView dx, ConstMatView dA,
                       ConstMatView dB) {
  checkLora(x, layer, "dy", dy.rows, dy.cols);
  requireShape("dA", dA.rows, dA.cols, layer.a.rows, x.cols);
  requireShape("dB", dB.rows, dB.cols, layer.b.rows, layer.a.rows);
  if (!dx.empty()) requireShape("dx", dx.rows, dx.cols, x.rows, x.cols);
}

void checkEigenLoraForward(ConstMatView x, const EigenLoraLayer& layer, ConstMatView y) {
  checkEigenLora(x, layer);
  requireShape("y", y.rows, y.cols, x.rows, layer.componentsB.rows);
}

void checkEigenLoraBackward(ConstMatView x, ConstMatView dy, const EigenLoraLayer& l, ConstMatView dx,
                            ConstMatView dAlpha, ConstMatView dBeta) {
  checkEigenLora(x, l);
  requireShape("dy", dy.rows, dy.cols, x.rows, l.componentsB.rows);
  requireShape("dAlpha", dAlpha.rows, dAlpha.cols, l.alpha.rows, l.alpha.cols);
  requireShape("dBeta", dBeta.rows, dBeta.cols, l.beta.rows, l.beta.cols);
  if (!dx.empty()) requireShape("dx", dx.rows, dx.cols, x.rows, x.cols);
}

void checkLinearForward(ConstMatView x, ConstMatView weight, ConstMatView y) {
  requirePositive("x rows", x.rows);
  requirePositive("x cols (d_in)", x.cols);
  requireShape("weight", weight.rows, weight.cols, weight.rows, x.cols);
  requirePositive("weight rows (d_out)", weight.rows);
  requireShape("y", y.rows, y.cols, x.rows, weight.rows);
}

void checkLinearBackward(ConstMatView x, ConstMatView dy, ConstMatView weight, ConstMatView dx, ConstMatView dWeight) {
  requirePositive("x rows", x.rows);
  requirePositive("x cols (d_in)", x.cols);
  requirePositive("dy cols (d_out)", dy.cols);
  requireShape("dy", dy.rows, dy.cols, x.rows, dy.cols);
  if (!dx.empty()) {
    if (weight.empty()) throw CoreError(code::kInvalidArgument, "weight: needed to compute dx");
    requireShape("weight", weight.rows, weight.cols, dy.cols, x.cols);
    requireShape("dx", dx.rows, dx.cols, x.rows, x.cols);
  }
  if (!dWeight.empty()) requireShape("dWeight", dWeight.rows, dWeight.cols, dy.cols, x.cols);
}

void checkAddLowRank(ConstMatView target, ConstMatView b, ConstMatView a, bool transposed) {
  const Index r = a.rows, dIn = a.cols, dOut = b.rows;
  requirePositive("A rows (rank)", r);
  requireShape("B", b.rows, b.cols, dOut, r);
  if (transposed) requireShape("target", target.rows, target.cols, dIn, dOut);
  else requireShape("target", target.rows, target.cols, dOut, dIn);
}

void loraForward(ConstMatView xv, const LoraLayer& layer, MatView yv, SavedProducts* save) {
  checkLoraForward(xv, layer, yv.view());
  const ConstMapF x = xv.map();
  MapF y = yv.map();
  baseForward(x, layer.weight, layer.bias, y);
  RowMatF h = productOf(x, layer.a.map().transpose());  // n x r
  product(y, h, layer.b.map().transpose(), layer.scale, true);
  if (save != nullptr) {
    save->h = std::move(h);
    save->threads = currentThreads();
  }
}

void loraBackward(ConstMatView xv, ConstMatView dyv, const LoraLayer& layer, MatView dxv, MatView dAv,
                  MatView dBv, const SavedProducts* saved) {
  checkLoraBackward(xv, dyv, layer, dxv.view(), dAv.view(), dBv.view());

  const ConstMapF x = xv.map(), dy = dyv.map(), a = layer.a.map(), b = layer.b.map();
  const bool reuse = reusable(saved, ProductOrder::Auto);
  const RowMatF fresh = reuse ? RowMatF() : productOf(x, a.transpose());
  const RowMatF& h = reuse ? saved->h : fresh;          // n x r
  const RowMatF dh = productOf(dy, b, layer.scale);    // n x r
  product(dBv.map(), dy.transpose(), h, layer.scale, false);
  product(dAv.map(), dh.transpose(), x, 1.0f, false);
  if (!dxv.empty()) {
    MapF dx = dxv.map();
    baseBackward(dy, layer.weight, dx);
    product(dx, dh, a, 1.0f, true);
  }
}

void linearForward(ConstMatView xv, ConstMatView weight, const float* bias, MatView yv) {
  checkLinearForward(xv, weight, yv.view());
  const ConstMapF x = xv.map();
  MapF y = yv.map();
  baseForward(x, weight, bias, y);
}

void linearBackward(ConstMatView xv, ConstMatView dyv, ConstMatView weight, MatView dxv, MatView dWv,
                    float* dBias) {
  checkLinearBackward(xv, dyv, weight, dxv.view(), dWv.view());
  const Index dOut = dyv.cols;
  const ConstMapF x = xv.map(), dy = dyv.map();
  if (!dxv.empty()) {
    MapF dx = dxv.map();
    baseBackward(dy, weight, dx);
  }
  if (!dWv.empty()) product(dWv.map(), dy.transpose(), x, 1.0f, false);
  if (dBias != nullptr) {
    // Row after row, so every column is summed in the same order whatever the buffer's
    // alignment: Eigen's vectorised colwise().sum() on a Map peels a different head for
    // each alignment, and the bias gradient (so training) changed from run to run.
    Eigen::Map<RowVecF> db(dBias, dOut);
    db.setZero();
    for (Index i = 0; i < dy.rows(); ++i) db += dy.row(i);
  }
}

void addLowRank(MatView targetV, ConstMatView bv, ConstMatView av, float scale, bool transposed) {
  checkAddLowRank(targetV.view(), bv, av, transposed);
  MapF target = targetV.map();
  const ConstMapF a = av.map(), b = bv.map();
  if (transposed) target.noalias() += scale * (a.transpose() * b.transpose());
  else target.noalias() += scale * (b * a);
}

double eigenLoraCost(Index rows, const EigenLoraLayer& l, ProductOrder order, bool backward, bool needInputGrad) {
  const double n = static_cast<double>(rows), dIn = static_cast<double>(l.componentsA.rows),
               dOut = static_cast<double>(l.componentsB.rows), kA = static_cast<double>(l.componentsA.cols),
               kB = static_cast<double>(l.componentsB.cols), r = static_cast<double>(l.alpha.cols);
  const double rebuildFactors = r * (dIn * kA + dOut * kB);
  if (order == ProductOrder::Rebuild) {
    if (!backward) return rebuildFactors + n * r * (dIn + dOut);
    return rebuildFactors + 2 * n * r * (dIn + dOut) + r * (kA * dIn + kB * dOut) +
           (needInputGrad ? n * r * dIn : 0.0);
  }
  if (!backward) return n * (dIn * kA + kA * r + r * kB + kB * dOut);
  return n * (dIn * kA + dOut * kB) + 2 * n * r * (kA + kB) + (needInputGrad ? n * kA * (r + dIn) : 0.0);
}

ProductOrder chooseOrder(Index rows, const EigenLoraLayer& l, bool backward, bool needInputGrad) {
  return eigenLoraCost(rows, l, ProductOrder::Rebuild, backward, needInputGrad) <
                 eigenLoraCost(rows, l, ProductOrder::Project, backward, needInputGrad)
             ? ProductOrder::Rebuild
             : ProductOrder::Project;
}

ProductOrder eigenLoraForward(ConstMatView xv, const EigenLoraLayer& l, MatView yv, ProductOrder order,
                              SavedProducts* save) {
  checkEigenLoraForward(xv, l, yv.view());
  if (order == ProductOrder::Auto) order = chooseOrder(xv.rows, l, false, false);

  const ConstMapF x = xv.map(), vA = l.componentsA.map(), alpha = l.alpha.map(), beta = l.beta.map(),
                  uB = l.componentsB.map();
  MapF y = yv.map();
  baseForward(x, l.weight, l.bias, y);
  RowMatF h, z, aT, b;
  if (order == ProductOrder::Rebuild) {
    aT = productOf(vA, alpha);  // d_in x r
    b = productOf(uB, beta);    // d_out x r
    z = productOf(x, aT);       // n x r
    product(y, z, b.transpose(), l.scale, true);
  } else {
    h = productOf(x, vA);                              // n x K_A
    z = productOf(h, alpha);                           // n x r
    const RowMatF t = productOf(z, beta.transpose());  // n x K_B
    product(y, t, uB.transpose(), l.scale, true);
  }
  if (save != nullptr) {
    save->h = std::move(h);
    save->z = std::move(z);
    save->aT = std::move(aT);
    save->b = std::move(b);
    save->order = order;
    save->threads = currentThreads();
  }
  return order;
}

ProductOrder eigenLoraBackward(ConstMatView xv, ConstMatView dyv, const EigenLoraLayer& l, MatView dxv,
                               MatView dAlphaV, MatView dBetaV, ProductOrder order, const SavedProducts* saved) {
  checkEigenLoraBackward(xv, dyv, l, dxv.view(), dAlphaV.view(), dBetaV.view());
  const Index n = xv.rows;
  if (order == ProductOrder::Auto) order = chooseOrder(n, l, true, !dxv.empty());

  const ConstMapF x = xv.map(), dy = dyv.map(), vA = l.componentsA.map(), alpha = l.alpha.map(),
                  beta = l.beta.map(), uB = l.componentsB.map();
  const float s = l.scale;
  MapF dAlpha = dAlphaV.map(), dBeta = dBetaV.map();
  const bool reuse = reusable(saved, order);
  RowMatF fresh[3];

  if (order == ProductOrder::Rebuild) {
    if (!reuse) {
      fresh[0] = productOf(vA, alpha);
      fresh[1] = productOf(uB, beta);
      fresh[2] = productOf(x, fresh[0]);
    }
    const RowMatF& aT = reuse ? saved->aT : fresh[0];   // d_in x r
    const RowMatF& b = reuse ? saved->b : fresh[1];     // d_out x r
    const RowMatF& z = reuse ? saved->z : fresh[2];     // n x r
    const RowMatF dz = productOf(dy, b, s);             // n x r
    const RowMatF xTdz = productOf(x.transpose(), dz);  // d_in x r
    product(dAlpha, vA.transpose(), xTdz, 1.0f, false);
    const RowMatF dyTz = productOf(dy.transpose(), z);  // d_out x r
    product(dBeta, uB.transpose(), dyTz, s, false);
    if (!dxv.empty()) {
      MapF dx = dxv.map();
      baseBackward(dy, l.weight, dx);
      product(dx, dz, aT.transpose(), 1.0f, true);
    }
  } else {
    if (!reuse) {
      fresh[0] = productOf(x, vA);
      fresh[1] = productOf(fresh[0], alpha);
    }
    const RowMatF& h = reuse ? saved->h : fresh[0];     // n x K_A
    const RowMatF& z = reuse ? saved->z : fresh[1];     // n x r
    const RowMatF g = productOf(dy, uB);                // n x K_B
    product(dBeta, g.transpose(), z, s, false);
    const RowMatF dz = productOf(g, beta, s);           // n x r
    product(dAlpha, h.transpose(), dz, 1.0f, false);
    if (!dxv.empty()) {
      MapF dx = dxv.map();
      baseBackward(dy, l.weight, dx);
      const RowMatF dh = productOf(dz, alpha.transpose());  // n x K_A
      product(dx, dh, vA.transpose(), 1.0f, true);
    }
  }
  return order;
}

}  // namespace eigenlorax
