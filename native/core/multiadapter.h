// Many adapters in one batch (DESIGN §1, serving). Each row of the batch names its
// adapter (or -1 for none).
//
// On one EigenLoRA basis every adapter i is a K_A x K_B matrix M_i = s_i alpha_i beta_i^T,
// so y_b += (x_b V_A) M_i(b) U_B^T: the two large products are shared by the whole batch
// and only the tiny middle step is grouped by adapter.
//
// The baseline gathers each row's own LoRA pair (A_i, B_i): y_b += s_i (x_b A_i^T) B_i^T,
// one segment per adapter (the segmented approach of Punica and S-LoRA).
#pragma once
#include <cstdint>
#include <vector>

#include "matrix.h"

namespace eigenlorax {

struct EigenAdapterBank {
  ConstMatView componentsA;      // V_A: d_in x K_A
  ConstMatView componentsB;      // U_B: d_out x K_B
  const float* mixing = nullptr; // count x K_A x K_B, adapter after adapter, row-major
  Index count = 0;
  // Optional: each adapter's rank r_i (an upper bound of its mixing matrix's), so choosing
  // between the shared products and rank pairs needs no factorisation of every M_i.
  const int32_t* ranks = nullptr;
};

struct LoraBank {
  std::vector<ConstMatView> a;  // A_i: r_i x d_in
  std::vector<ConstMatView> b;  // B_i: d_out x r_i
  std::vector<float> scales;
};

// Checks the bank and the row indices (each in [-1, count)) against x and y.
void checkEigenBankApply(ConstMatView x, const EigenAdapterBank& bank, const int32_t* rowAdapter, ConstMatView weight,
                         MatView y);
void checkLoraBankApply(ConstMatView x, const LoraBank& bank, const int32_t* rowAdapter, ConstMatView weight, MatView y);

class PairCache;

// y = x W^T + b (when given, else 0) + each row's adapter. With `cache` (pair_cache.h), the
// bank's components must be the cache's own.
void eigenBankApply(ConstMatView x, const EigenAdapterBank& bank, const int32_t* rowAdapter, ConstMatView weight,
                    const float* bias, MatView y, PairCache* cache = nullptr);
void loraBankApply(ConstMatView x, const LoraBank& bank, const int32_t* rowAdapter, ConstMatView weight,
                   const float* bias, MatView y);

}  // namespace eigenlorax
