// Entry checks of the kept-position ops (schemas: ops/positions.cpp), shared by the CPU and
// CUDA kernels: everything but the positions' values, which each device checks before it
// writes (ascending, inside the target), so an untrusted index can never write out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace darex {

inline void check_positions_args(const at::Tensor& target, const at::Tensor& positions, const at::Tensor& saved,
                                 const at::Tensor* values) {
  TORCH_CHECK_TYPE(at::isFloatingType(target.scalar_type()), "target must be a floating-point tensor, got ",
                   target.scalar_type());
  TORCH_CHECK_VALUE(target.is_contiguous(), "target must be contiguous");
  TORCH_CHECK_TYPE(positions.scalar_type() == at::kLong, "positions must be int64, got ", positions.scalar_type());
  TORCH_CHECK_VALUE(positions.dim() == 1, "positions must be 1-D, got ", positions.dim(), " dims");
  const auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK_VALUE(t.device() == target.device(), name, " is on ", t.device(), " but target is on ", target.device());
  };
  same(positions, "positions");
  same(saved, "saved");
  TORCH_CHECK_TYPE(saved.scalar_type() == target.scalar_type(), "saved must have target's dtype ",
                   target.scalar_type(), ", got ", saved.scalar_type());
  TORCH_CHECK_VALUE(saved.dim() == 1 && saved.numel() == positions.numel() && saved.is_contiguous(),
                    "saved must be a contiguous 1-D tensor of ", positions.numel(), " entries (one per position)");
  if (values != nullptr) {
    same(*values, "values");
    TORCH_CHECK_TYPE(values->scalar_type() == target.scalar_type(), "values must have target's dtype ",
                     target.scalar_type(), ", got ", values->scalar_type());
    TORCH_CHECK_VALUE(values->dim() == 1 && values->numel() == positions.numel(),
                      "values must be 1-D with ", positions.numel(), " entries (one per position), got ",
                      values->numel());
  }
}

}  // namespace darex
