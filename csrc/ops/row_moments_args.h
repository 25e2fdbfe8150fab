// Entry checks of row_moments, shared by the CPU and CUDA kernels (see ops/row_moments.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "prune_args.h"

namespace darex {

// delta [rows, cols] of any value dtype; x [cols] and bias [rows] in float64 on delta's device.
inline void check_row_moments_args(const at::Tensor& delta, const at::Tensor& x,
                                   const std::optional<at::Tensor>& bias) {
  check_values_tensor(delta, "delta");
  TORCH_CHECK_VALUE(delta.dim() == 2, "delta must be 2-D [rows, cols], got shape ", delta.sizes());
  TORCH_CHECK_VALUE(x.dim() == 1 && x.size(0) == delta.size(1), "x must be 1-D of length ", delta.size(1),
                    " (delta.shape[1]), got shape ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kDouble, "x must be float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.device() == delta.device(), "x must be on ", delta.device(), ", got ", x.device());
  if (!bias.has_value()) return;
  const at::Tensor& b = *bias;
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == delta.size(0), "bias must be 1-D of length ", delta.size(0),
                    " (delta.shape[0]), got shape ", b.sizes());
  TORCH_CHECK_TYPE(b.scalar_type() == at::kDouble, "bias must be float64, got ", b.scalar_type());
  TORCH_CHECK_VALUE(b.device() == delta.device(), "bias must be on ", delta.device(), ", got ", b.device());
}

}  // namespace darex
