// Entry checks shared by the CPU and CUDA kernels of the prune ops. The Python wrappers raise
// friendlier errors first; these keep direct torch.ops.darex.* calls safe.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>

namespace darex {

inline void check_values_tensor(const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
                   name, " must be float32, float64, float16 or bfloat16, got ", dt);
}

inline void check_p(double p) {
  TORCH_CHECK_VALUE(p >= 0.0 && p < 1.0, "p must be in [0, 1), got ", p);
}

// The mask spec an op uses (docs/mask_spec.md): the schemas' `mask_spec` argument.
constexpr int64_t kMaskPhilox = 1;  // version 1, one Philox word per element
constexpr int64_t kMaskSkip = 2;    // version 2, geometric gaps of the rare outcome

inline void check_mask_spec(int64_t mask_spec) {
  TORCH_CHECK_VALUE(mask_spec == kMaskPhilox || mask_spec == kMaskSkip,
                    "mask_spec must be 1 (philox) or 2 (skip), got ", mask_spec);
}

// Spec v2 is hybrid (docs/mask_spec.md, "Version 2", "Which mask"): the stripe gap walk only
// when the rare outcome is rare, rho = min(p, 1 - p) < 1/8; for p in [1/8, 7/8] (both ends
// included) spec v2's mask is spec v1's mask, the same Philox words and threshold. The walk costs
// a draw and a table search per rare element, more than v1's one word per element once rho is
// this large. The twin: darex_ext/reference/skip_mask.py, WALK_MAX_RHO.
constexpr double kSkipWalkMaxRho = 0.125;  // the walk is used iff rho < this (exact in binary)

// The spec an op's kernels run for (mask_spec, p): kMaskPhilox for kMaskSkip at moderate p,
// otherwise mask_spec unchanged (an invalid value stays invalid). Every kernel that takes
// mask_spec calls this right after its argument checks, before any branch on the spec.
inline int64_t effective_mask_spec(int64_t mask_spec, double p) {
  if (mask_spec == kMaskSkip && p >= kSkipWalkMaxRho && p <= 1.0 - kSkipWalkMaxRho) return kMaskPhilox;
  return mask_spec;
}

inline void check_offset(int64_t offset) {
  TORCH_CHECK_VALUE(offset >= 0, "offset must be >= 0, got ", offset);
}

// Validates the rescale arguments against `delta`; returns the row length for per-row q.
inline int64_t check_q(const at::Tensor& delta, const std::optional<at::Tensor>& q_rows, double q) {
  if (!q_rows.has_value()) {
    TORCH_CHECK_VALUE(std::isfinite(q) && q > 0.0, "q must be a finite number > 0, got ", q);
    return 0;
  }
  const at::Tensor& qr = *q_rows;
  TORCH_CHECK_VALUE(delta.dim() >= 1, "per-row q needs a tensor with at least one dimension");
  TORCH_CHECK_VALUE(qr.dim() == 1 && qr.size(0) == delta.size(0), "q must have length ",
                    delta.size(0), " (delta.shape[0]), got shape ", qr.sizes());
  TORCH_CHECK_VALUE(qr.device() == delta.device(), "q must be on ", delta.device(), ", got ",
                    qr.device());
  const auto acc = delta.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_TYPE(qr.scalar_type() == acc, "q must be ", acc, " for a ", delta.scalar_type(),
                   " tensor, got ", qr.scalar_type());
  TORCH_CHECK_VALUE(qr.is_contiguous(), "q must be contiguous");
  return delta.size(0) == 0 ? 0 : delta.numel() / delta.size(0);
}

inline void check_same(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK_VALUE(a.sizes() == b.sizes(), an, " and ", bn, " must have the same shape, got ",
                    a.sizes(), " and ", b.sizes());
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), an, " and ", bn,
                   " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK_VALUE(a.device() == b.device(), an, " and ", bn,
                    " must be on the same device, got ", a.device(), " and ", b.device());
}

// All entry checks of prune_ / kept_abs_sum (q_rows may be absent); returns the row length.
inline int64_t check_prune_args(const at::Tensor& delta, double p, int64_t offset,
                                const std::optional<at::Tensor>& q_rows, double q,
                                int64_t mask_spec = kMaskPhilox) {
  check_values_tensor(delta, "delta");
  check_mask_spec(mask_spec);
  check_p(p);
  check_offset(offset);
  return check_q(delta, q_rows, q);
}

// All entry checks of dare_out; returns the row length for per-row q.
inline int64_t check_dare_args(const at::Tensor& finetuned, const at::Tensor& base, double p,
                               int64_t offset, const std::optional<at::Tensor>& q_rows, double q,
                               const at::Tensor& out, int64_t mask_spec) {
  check_values_tensor(finetuned, "finetuned");
  check_mask_spec(mask_spec);
  check_same(finetuned, "finetuned", base, "base");
  check_same(finetuned, "finetuned", out, "out");
  check_p(p);
  check_offset(offset);
  return check_q(finetuned, q_rows, q);
}

}  // namespace darex
