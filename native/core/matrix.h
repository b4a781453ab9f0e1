// Views of caller-owned row-major float buffers (the layout of { rows, cols, data } in
// JavaScript), and the Eigen types the kernels map them to. The core never owns these.
#pragma once
#include <Eigen/Core>
#include <cstdint>
#include <string>

#include "errors.h"

namespace eigenlorax {

using Index = Eigen::Index;
using RowMatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ColMatF = Eigen::MatrixXf;
using ColMatD = Eigen::MatrixXd;
using MapF = Eigen::Map<RowMatF>;
using ConstMapF = Eigen::Map<const RowMatF>;

struct ConstMatView {
  const float* data = nullptr;
  Index rows = 0;
  Index cols = 0;
  bool empty() const { return data == nullptr; }
  ConstMapF map() const { return ConstMapF(data, rows, cols); }
};

struct MatView {
  float* data = nullptr;
  Index rows = 0;
  Index cols = 0;
  bool empty() const { return data == nullptr; }
  MapF map() const { return MapF(data, rows, cols); }
  ConstMatView view() const { return {data, rows, cols}; }
};

inline std::string shapeString(Index rows, Index cols) {
  return std::to_string(rows) + " x " + std::to_string(cols);
}

// Throws ERR_SHAPE_MISMATCH naming the argument when a view does not have the shape the
// operation needs. Callers check every view before any Eigen::Map touches memory.
inline void requireShape(const char* name, Index rows, Index cols, Index wantRows, Index wantCols) {
  if (rows != wantRows || cols != wantCols) {
    throw CoreError(code::kShapeMismatch, std::string(name) + ": expected shape " +
                                              shapeString(wantRows, wantCols) + ", received " +
                                              shapeString(rows, cols));
  }
}

}  // namespace eigenlorax
