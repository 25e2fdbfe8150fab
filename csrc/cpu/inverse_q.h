// Per-element 1/q for the CPU kernels that visit elements in increasing flat order (prune_,
// dare, seeded pack): the row's q for per-row q, else the scalar.
#pragma once

#include <cstdint>

#include "../common/dare_math.h"

namespace darex::cpu {

// 1/q of flat element e (tensor-local). Rows change rarely along increasing e, so 1/q is
// recomputed once per row, not per element.
template <typename acc_t>
struct InverseQ {
  const acc_t* q_rows;  // nullptr: the scalar for every element
  int64_t row_len;
  acc_t scalar;
  int64_t row = -1;
  acc_t inv = acc_t(0);
  acc_t at(int64_t e) {
    if (q_rows == nullptr) return scalar;
    const int64_t r = e / row_len;
    if (r != row) {
      row = r;
      inv = inverse_q<acc_t>(q_rows[r]);
    }
    return inv;
  }
};

}  // namespace darex::cpu
