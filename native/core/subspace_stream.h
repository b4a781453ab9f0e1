// Out-of-core build of one module (DESIGN §5). A side's stack S (sum r x d, rows of the
// adapters' factors) enters rsvd only through S x and S^T q, which are sums over the
// adapters' row blocks: S^T q = sum_i S_i^T q_i with q_i = S_i x. So the same randomized SVD
// as the in-memory build (same seed, same test matrix, same re-orthonormalisation) runs
// with the adapters streamed once per pass, holding d x (K + p) per side and the adapters
// of one chunk. The orthonormal Q of q = S x, which rsvd forms, is kept implicit:
// q = Q R with R (l x l) from a TSQR over the blocks, and S^T Q = (S^T q) R^-1.
// Results equal the in-memory build's within float32 rounding.
#pragma once
#include <atomic>
#include <memory>
#include <vector>

#include "subspace.h"

namespace eigenlorax {

// True when buildModuleSubspace's rsvd takes its exact path for a side; streaming is then
// not offered (the stack has at most 2 (K + p) rows or columns).
bool streamNeedsExactPath(Index d, Index totalRank, Index k, Index oversample);

class ModuleStream {
 public:
  // totalRank: sum of the adapters' ranks; adapters: their count. Checks the options.
  ModuleStream(Index dIn, Index dOut, Index totalRank, Index adapters, Index kA, Index kB,
               const ModuleSubspaceOptions& options);
  ~ModuleStream();

  // Passes over the adapters (all of them, in the same order each time), and the current one.
  int passes() const { return passes_; }
  int pass() const { return pass_; }
  bool finished() const { return pass_ >= passes_; }

  void checkChunk(const std::vector<FactorPair>& chunk) const;
  // The next adapters of the current pass, in order.
  void add(const std::vector<FactorPair>& chunk);
  // Ends the current pass (after all adapters were added).
  void endPass();
  // After the last pass: components, singular values, means, energies and norms.
  void checkFinish(const ModuleSubspaceOutputs& out) const;
  ModuleSubspaceInfo finish(const ModuleSubspaceOutputs& out);

  // Set while a job uses the stream; a second concurrent use is refused.
  std::atomic<bool> busy{false};

 private:
  struct Side;
  enum class Stage { Mean, Sketch, Signs };
  Stage stage() const;

  Index dIn_, dOut_, totalRank_, adapters_;
  ModuleSubspaceOptions options_;
  int passes_ = 0;
  int pass_ = 0;
  Index seen_ = 0;     // adapters added in this pass
  Index rowsSeen_ = 0; // their rows
  std::unique_ptr<Side> a_, b_;
  std::vector<double> norms_;
  std::vector<float> chunkA_, chunkB_;  // the chunk's stacked rows, reused
};

}  // namespace eigenlorax
