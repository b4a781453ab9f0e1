// The command line of the C++ checks (test/native/*_check.cpp): `--seed N` (default 1).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <string>

inline uint64_t seedArgument(int argc, char** argv) {
  uint64_t seed = 1;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--seed") seed = std::strtoull(argv[i + 1], nullptr, 10);
  return seed;
}
