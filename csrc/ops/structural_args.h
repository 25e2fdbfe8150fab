// Entry checks and slice geometry shared by the CPU and CUDA structural kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "prune_args.h"

namespace darex {

// delta seen as [outer, slices, inner] (row-major), the slices being indexed by `dim`.
struct SliceShape {
  int64_t outer;
  int64_t slices;
  int64_t inner;
};

inline SliceShape check_structural_args(const at::Tensor& delta, double p, int64_t dim, int64_t offset,
                                        double q, int64_t mask_spec) {
  check_values_tensor(delta, "delta");
  check_mask_spec(mask_spec);
  check_p(p);
  check_offset(offset);
  TORCH_CHECK_VALUE(std::isfinite(q) && q > 0.0, "q must be a finite number > 0, got ", q);
  const int64_t nd = delta.dim();
  TORCH_CHECK_VALUE(nd >= 1, "structural pruning needs a tensor with at least one dimension");
  TORCH_CHECK_VALUE(dim >= -nd && dim < nd, "dim ", dim, " is out of range for a tensor of ", nd,
                    " dimensions");
  const int64_t d = dim < 0 ? dim + nd : dim;
  SliceShape s{1, delta.size(d), 1};
  for (int64_t k = 0; k < d; ++k) s.outer *= delta.size(k);
  for (int64_t k = d + 1; k < nd; ++k) s.inner *= delta.size(k);
  return s;
}

// The keep decision of every slice: the keep_mask op on a length-`slices` vector, so the
// structural mask is by construction the spec's mask of a 1-D tensor (one source of truth).
inline at::Tensor slice_keep_flags(const at::Tensor& delta, int64_t slices, double p, int64_t seed,
                                   int64_t offset, int64_t mask_spec) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("darex::keep_mask", "")
                             .typed<at::Tensor(const at::Tensor&, double, int64_t, int64_t, int64_t)>();
  // A 0-d tensor expanded to the slice count: the op reads only its shape and device.
  const at::Tensor like = at::empty({}, delta.options().dtype(at::kBool)).expand({slices});
  return op.call(like, p, seed, offset, mask_spec);
}

}  // namespace darex
