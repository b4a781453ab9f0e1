#include "pair_cache.h"

#include <Eigen/QR>
#include <cstring>

namespace eigenlorax {

MixingFactors factorMixing(const float* m, Index kA, Index kB) {
  const Eigen::ColPivHouseholderQR<ColMatF> qr(ConstMapF(m, kA, kB));
  const Index r = std::max<Index>(1, qr.rank());
  // M P = Q R, so M = Q[:, :r] (R[:r, :] P^T) up to the dropped rounding-level rows of R.
  MixingFactors f;
  f.left = qr.householderQ() * ColMatF::Identity(kA, r);
  const ColMatF upper = qr.matrixR().topRows(r).triangularView<Eigen::Upper>();
  f.right = upper * qr.colsPermutation().transpose();
  return f;
}

std::vector<std::shared_ptr<const RankPair>> buildPairs(ConstMatView componentsA, ConstMatView componentsB,
                                                        const std::vector<MixingFactors>& factors) {
  std::vector<RankPair> built(factors.size());
  const ConstMapF vA = componentsA.map(), uB = componentsB.map();
  // Two products per pair, each task on one thread: inside the parallel loop Eigen's GEMM
  // runs single-threaded, and alone (one thread) it is single-threaded too.
#pragma omp parallel for schedule(dynamic)
  for (Index j = 0; j < static_cast<Index>(2 * factors.size()); ++j) {
    const size_t i = static_cast<size_t>(j / 2);
    if (j % 2 == 0) {
      built[i].a.noalias() = vA * factors[i].left;
    } else {
      built[i].b.noalias() = uB * factors[i].right.transpose();
    }
  }
  std::vector<std::shared_ptr<const RankPair>> pairs;
  pairs.reserve(built.size());
  for (RankPair& p : built) pairs.push_back(std::make_shared<const RankPair>(std::move(p)));
  return pairs;
}

PairCache::PairCache(RowMatF componentsA, RowMatF componentsB, size_t budget)
    : a_(std::move(componentsA)), b_(std::move(componentsB)), budget_(budget) {}

size_t PairCache::entryBytes(Index rank) const {
  return sizeof(float) * static_cast<size_t>(rank * (a_.rows() + b_.rows()) + a_.cols() * b_.cols());
}

size_t PairCache::bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return bytes_;
}

size_t PairCache::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return lru_.size();
}

// A multiply-xorshift over the matrix's 64-bit words: a few microseconds for 64 x 64, and
// a collision only costs a comparison (entries are compared whole).
uint64_t PairCache::hashOf(const float* m) const {
  const size_t bytes = sizeof(float) * static_cast<size_t>(a_.cols() * b_.cols());
  const unsigned char* p = reinterpret_cast<const unsigned char*>(m);
  uint64_t h = 0x9e3779b97f4a7c15ULL ^ bytes;
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 31;
  }
  for (; i < bytes; ++i) h = (h ^ p[i]) * 0x94d049bb133111ebULL;
  return h;
}

PairCache::Lru::iterator PairCache::locate(const float* m, uint64_t hash) {
  const size_t count = static_cast<size_t>(a_.cols() * b_.cols());
  const auto range = index_.equal_range(hash);
  for (auto it = range.first; it != range.second; ++it) {
    if (std::memcmp(it->second->mixing.data(), m, count * sizeof(float)) == 0) return it->second;
  }
  return lru_.end();
}

std::shared_ptr<const RankPair> PairCache::find(const float* m) {
  const uint64_t hash = hashOf(m);
  std::lock_guard<std::mutex> lock(mutex_);
  const Lru::iterator it = locate(m, hash);
  if (it == lru_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it);
  return it->pair;
}

void PairCache::insert(const float* m, std::shared_ptr<const RankPair> pair) {
  const uint64_t hash = hashOf(m);
  const size_t count = static_cast<size_t>(a_.cols() * b_.cols());
  const size_t size = entryBytes(pair->a.cols());
  std::lock_guard<std::mutex> lock(mutex_);
  const Lru::iterator found = locate(m, hash);
  if (found != lru_.end()) {  // another job built the same pair meanwhile (the same bits)
    lru_.splice(lru_.begin(), lru_, found);
    return;
  }
  if (size > budget_) return;
  lru_.push_front(Entry{std::vector<float>(m, m + count), std::move(pair), hash});
  index_.emplace(hash, lru_.begin());
  bytes_ += size;
  while (bytes_ > budget_) {
    Entry& last = lru_.back();
    const auto range = index_.equal_range(last.hash);
    for (auto it = range.first; it != range.second; ++it) {
      if (it->second == std::prev(lru_.end())) {
        index_.erase(it);
        break;
      }
    }
    bytes_ -= entryBytes(last.pair->a.cols());
    lru_.pop_back();
  }
}

}  // namespace eigenlorax
