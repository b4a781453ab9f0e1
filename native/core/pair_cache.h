// Rank pairs of an EigenLoRA bank's adapters, and a cache of them kept between calls.
//
// Adapter i of a bank is the K_A x K_B matrix M_i = s alpha_i beta_i^T of rank r_i, so
// M_i = L_i R_i and the adapter is the LoRA pair A_i = V_A L_i (d_in x r), B_i = U_B R_i^T
// (d_out x r). A batch with few distinct adapters, each with many rows, is cheaper through
// its pairs (2 r (d_in + d_out) per row) than through the shared K-wide products, but
// building a pair costs as much as about 2 r rows of the shared path; a bank that keeps
// the pairs of the adapters recent batches used (`PairCache`) pays that once.
//
// A pair is a function of M_i and the components alone, built the same way (same products,
// one thread each) whether it is built for one call or taken from the cache, so a batch's
// result does not depend on what the cache holds: entries are found by their mixing
// matrix's bytes (hash, then compared whole), not by a slot that could be reused.
#pragma once
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "matrix.h"

namespace eigenlorax {

struct RankPair {
  RowMatF a;  // d_in x r
  RowMatF b;  // d_out x r
};

// M (K_A x K_B, row-major) = left (K_A x r) right (r x K_B), r its numerical rank (at
// least 1), from a column-pivoted QR that drops only the rounding-level tail.
struct MixingFactors {
  ColMatF left;
  ColMatF right;
  Index rank() const { return left.cols(); }
};
MixingFactors factorMixing(const float* m, Index kA, Index kB);

// The pairs V_A left_j, U_B right_j^T of each factorisation, one product per task, each on
// one thread (so the bits do not depend on the thread count).
std::vector<std::shared_ptr<const RankPair>> buildPairs(ConstMatView componentsA, ConstMatView componentsB,
                                                        const std::vector<MixingFactors>& factors);

// The pairs of a bank's hot adapters, least recently used dropped first, holding at most
// `budget` bytes (pairs and the mixing matrices they are found by). Owns its copy of the
// components the pairs are built from. Thread-safe: jobs on several threads share one; a
// pair a job took stays valid for that job after it is dropped here.
class PairCache {
 public:
  PairCache(RowMatF componentsA, RowMatF componentsB, size_t budget);

  ConstMatView componentsA() const { return {a_.data(), a_.rows(), a_.cols()}; }
  ConstMatView componentsB() const { return {b_.data(), b_.rows(), b_.cols()}; }
  size_t budget() const { return budget_; }
  // Bytes one entry of rank r takes.
  size_t entryBytes(Index rank) const;
  size_t bytes() const;
  size_t size() const;

  // The cached pair of mixing matrix m (K_A x K_B), or null; a hit becomes most recent.
  std::shared_ptr<const RankPair> find(const float* m);
  // Adds the pair of m (unless already there) as most recent, then drops the least
  // recently used entries beyond the budget.
  void insert(const float* m, std::shared_ptr<const RankPair> pair);

 private:
  struct Entry {
    std::vector<float> mixing;
    std::shared_ptr<const RankPair> pair;
    uint64_t hash;
  };
  using Lru = std::list<Entry>;  // most recent first

  uint64_t hashOf(const float* m) const;
  Lru::iterator locate(const float* m, uint64_t hash);  // lru_.end() when absent; caller locks

  const RowMatF a_, b_;
  const size_t budget_;
  mutable std::mutex mutex_;
  Lru lru_;
  std::unordered_multimap<uint64_t, Lru::iterator> index_;
  size_t bytes_ = 0;
};

}  // namespace eigenlorax
