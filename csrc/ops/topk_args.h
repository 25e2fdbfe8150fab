// Entry checks shared by the CPU and CUDA kernels of the top-k ops (see ops/topk.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <utility>

#include "../common/dare_math.h"

namespace darex {

// (rows, cols) of the selection slices: the whole tensor, or size(0) rows of the product of
// the trailing sizes (computed from the sizes: numel / rows fails for 0 rows).
inline std::pair<int64_t, int64_t> slice_shape(const at::Tensor& t, bool per_row) {
  if (!per_row) return {1, t.numel()};
  TORCH_CHECK_VALUE(t.dim() >= 1, "per-row selection needs a tensor with at least one dimension");
  int64_t cols = 1;
  for (int64_t d = 1; d < t.dim(); ++d) cols *= t.size(d);
  return {t.size(0), cols};
}

inline void check_k(int64_t k, int64_t slice, const char* name) {
  TORCH_CHECK_VALUE(k >= 0 && k <= slice, name, " must be in [0, ", slice, "] (the slice size), got ", k);
}

// 1/q of an optional q (None: kept values are not rescaled).
template <typename acc_t>
std::optional<acc_t> inverse_of(std::optional<double> q) {
  if (!q) return std::nullopt;
  TORCH_CHECK_VALUE(std::isfinite(*q) && *q > 0.0, "q must be a finite number > 0, got ", *q);
  return inverse_q<acc_t>(static_cast<acc_t>(*q));
}

// WANDA: delta [rows, cols], act_norm [cols] in the accumulation dtype, same device.
inline void check_wanda_args(const at::Tensor& delta, const at::Tensor& act_norm, int64_t keep) {
  TORCH_CHECK_VALUE(delta.dim() == 2, "delta must be 2-D [out_features, in_features], got shape ", delta.sizes());
  const int64_t cols = delta.size(1);
  TORCH_CHECK_VALUE(act_norm.dim() == 1 && act_norm.size(0) == cols, "act_norm must be 1-D of length ",
                    cols, " (delta.shape[1]), got shape ", act_norm.sizes());
  TORCH_CHECK_VALUE(act_norm.device() == delta.device(), "act_norm must be on ", delta.device(), ", got ",
                    act_norm.device());
  const auto acc = delta.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_TYPE(act_norm.scalar_type() == acc, "act_norm must be ", acc, " for a ", delta.scalar_type(),
                   " delta, got ", act_norm.scalar_type());
  check_k(keep, cols, "keep");
}

}  // namespace darex
