// CPU kernel of structural DARE: the slice flags come from the keep_mask op, then one pass
// over delta as runs of `inner` contiguous elements, each run scaled or zeroed as a whole.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "../common/dare_math.h"
#include "../ops/structural_args.h"

namespace darex::cpu {
namespace {

constexpr int64_t kGrain = 1 << 16;  // elements per parallel task, at least

void structural_prune_cpu(at::Tensor& delta, double p, int64_t dim, int64_t seed, int64_t offset,
                          double q) {
  TORCH_CHECK(delta.device().is_cpu(), "delta must be a CPU tensor");
  const SliceShape s = check_structural_args(delta, p, dim, offset, q);
  if (delta.numel() == 0) return;
  const at::Tensor flags = slice_keep_flags(delta, s.slices, p, seed, offset);
  const bool* keep = flags.data_ptr<bool>();
  at::Tensor work = delta.is_contiguous() ? delta : delta.contiguous();
  const int64_t runs = s.outer * s.slices;
  const int64_t inner = s.inner;
  const int64_t grain = std::max<int64_t>(1, kGrain / inner);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_structural_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    scalar_t* x = work.data_ptr<scalar_t>();
    const acc_t inv = inverse_q<acc_t>(static_cast<acc_t>(q));
    at::parallel_for(0, runs, grain, [&](int64_t begin, int64_t end) {
      int64_t j = begin % s.slices;  // slice of run r = r mod slices, advanced incrementally
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* run = x + r * inner;
        if (keep[j]) {
          for (int64_t k = 0; k < inner; ++k)
            run[k] = static_cast<scalar_t>(prune_value(static_cast<acc_t>(run[k]), inv, true));
        } else {
          std::fill(run, run + inner, static_cast<scalar_t>(acc_t(0)));
        }
        if (++j == s.slices) j = 0;
      }
    });
  });
  if (!work.is_same(delta)) delta.copy_(work);
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CPU, m) { m.impl("structural_prune_", &structural_prune_cpu); }

}  // namespace darex::cpu
