// Output helpers shared by the native benchmarks (lowrank_bench.cpp, cuda_bench.cpp).
#pragma once
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

namespace eigenlorax::bench {

// One number formatted with a printf format.
inline std::string fmt(const char* f, double v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// Prints rows of cells with columns right-aligned (first column left-aligned).
inline void printTable(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size());
  for (size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
  for (const auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (size_t i = 0; i < cells.size(); ++i) {
      const std::string pad(width[i] - cells[i].size(), ' ');
      out += (i == 0 ? cells[i] + pad : pad + cells[i]) + (i + 1 < cells.size() ? "  " : "");
    }
    std::printf("%s\n", out.c_str());
  };
  line(header);
  std::vector<std::string> rule;
  for (size_t w : width) rule.push_back(std::string(w, '-'));
  line(rule);
  for (const auto& row : rows) line(row);
}

}  // namespace eigenlorax::bench
