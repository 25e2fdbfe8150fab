// CPU kernel of structural DARE: the slice flags come from the keep_mask op, then one pass over
// delta: a vectorizable select when the slices are the last dim, else runs of `inner`
// contiguous elements, each scaled or zeroed as a whole.
#include "isa.h"  // first: its GCC 12 workaround must precede the intrinsic headers

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "../common/dare_math.h"
#include "../ops/structural_args.h"

namespace darex::cpu {

// v if keep (0 or 1), else +0.0: an AND with an all-ones or all-zeros mask of v's bits.
template <typename acc_t>
inline acc_t keep_or_zero(acc_t v, uint8_t keep) {
  using bits_t = bits_of<acc_t>;
  return from_bits<acc_t>(to_bits(v) & (bits_t(0) - static_cast<bits_t>(keep)));
}

}  // namespace darex::cpu

// The element loops, compiled once per instruction set (see structural_spans.inc).
#define DAREX_ISA_SPANS "structural_spans.inc"
#include "isa.h"

namespace darex::cpu {
namespace {

constexpr int64_t kGrain = 1 << 16;  // elements per parallel task, at least

// Slices not along the last dim: runs of `inner` contiguous elements share one decision; run r
// is slice r mod slices.
template <typename scalar_t, typename acc_t>
void run_spans(scalar_t* x, const bool* keep, int64_t begin, int64_t end, const SliceShape& s, acc_t inv) {
  int64_t j = begin % s.slices;  // advanced incrementally, no division per run
  for (int64_t r = begin; r < end; ++r) {
    scalar_t* run = x + r * s.inner;
    if (keep[j]) {
      DAREX_ISA_CALL(scale_span, run, s.inner, inv);
    } else {
      std::fill(run, run + s.inner, storage_zero<scalar_t>());
    }
    if (++j == s.slices) j = 0;
  }
}

void structural_prune_cpu(at::Tensor& delta, double p, int64_t dim, int64_t seed, int64_t offset,
                          double q, int64_t mask_spec) {
  TORCH_CHECK(delta.device().is_cpu(), "delta must be a CPU tensor");
  const SliceShape s = check_structural_args(delta, p, dim, offset, q, mask_spec);
  mask_spec = effective_mask_spec(mask_spec, p);
  const int64_t n = delta.numel();
  if (n == 0) return;
  const at::Tensor flags = slice_keep_flags(delta, s.slices, p, seed, offset, mask_spec);
  const bool* keep = flags.data_ptr<bool>();
  const uint8_t* keep_bytes = reinterpret_cast<const uint8_t*>(keep);  // bool is one byte, 0 or 1
  at::Tensor work = delta.is_contiguous() ? delta : delta.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_structural_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    scalar_t* x = work.data_ptr<scalar_t>();
    const acc_t inv = inverse_q<acc_t>(static_cast<acc_t>(q));
    if (s.inner == 1) {
      at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end;) {
          const int64_t j = i % s.slices;
          const int64_t len = std::min(end - i, s.slices - j);
          DAREX_ISA_CALL(select_span, x + i, keep_bytes + j, len, inv);
          i += len;
        }
      });
    } else {
      at::parallel_for(0, s.outer * s.slices, std::max<int64_t>(1, kGrain / s.inner), [&](int64_t begin, int64_t end) {
        run_spans<scalar_t, acc_t>(x, keep, begin, end, s, inv);
      });
    }
  });
  if (!work.is_same(delta)) delta.copy_(work);
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CPU, m) { m.impl("structural_prune_", &structural_prune_cpu); }

}  // namespace darex::cpu
