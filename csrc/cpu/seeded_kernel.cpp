// CPU kernels of the seeded storage format: the mask is regenerated from (seed, p, offset,
// mask spec), so only kept values are stored. Spec v1, and spec v2 where drop is rare: pass 1
// packs the keep mask into bits with per-chunk counts (no data reads); pass 2 compacts (pack)
// or scatters (decode / add, see scatter_bits.h) chunk by chunk at the prefix-summed positions.
// Spec v2 where keep is rare: one stripe walk lists the kept positions (skip_walk.h, RareList)
// and pack, add and decode touch only those (plus, for a decode, the streamed zeros): O(kept).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <cstring>
#include <memory>
#include <vector>

#include "../common/dare_math.h"
#include "../ops/storage_args.h"
#include "inverse_q.h"
#include "scatter_bits.h"
#include "skip_walk.h"
#include "storage_common.h"
#include "stream_store.h"

namespace darex::cpu {
namespace {

// fill(src, dst, qr, inv_scalar) with x's and values' data in x's dtype, the per-row 1/q (or
// null) and the scalar 1/q in the accumulation type: the part both pack paths share.
template <typename F>
void with_pack_data(const at::Tensor& x, at::Tensor& values, const std::optional<at::Tensor>& q_rows, double q,
                    const F& fill) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_seeded_pack_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    fill(x.const_data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
         q_rows ? q_rows->const_data_ptr<acc_t>() : nullptr, inverse_q<acc_t>(static_cast<acc_t>(q)));
  });
}

// Spec v2 with keep rare: the kept values gathered from one stripe walk (RareList), O(kept).
at::Tensor seeded_pack_kept_only(const at::Tensor& x, double p, int64_t seed, int64_t offset,
                                 const std::optional<at::Tensor>& q_rows, double q, int64_t row_len) {
  const RareList kept(SkipPlan(p), static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), x.numel());
  at::Tensor values = at::empty({kept.total()}, x.options());
  with_pack_data(x, values, q_rows, q, [&](const auto* src, auto* dst, const auto* qr, auto inv_scalar) {
    using acc_t = decltype(inv_scalar);
    struct None {};
    const auto ahead = [&](int64_t begin, const uint16_t* pos, int32_t k) {
      for (int32_t j = 0; j < k; ++j) __builtin_prefetch(src + begin + pos[j], 0, 3);
    };
    kept.for_each<None>(ahead, [&](None&, int64_t begin, int32_t, const uint16_t* pos, int32_t k, int64_t first) {
      InverseQ<acc_t> inv{qr, row_len, inv_scalar};
      for (int32_t j = 0; j < k; ++j) {
        const int64_t e = begin + pos[j];
        dst[first + j] = prune_store(src[e], inv.at(e), true);
      }
    });
  });
  return values;
}

at::Tensor seeded_pack_cpu(const at::Tensor& delta, double p, int64_t seed, int64_t offset,
                           const std::optional<at::Tensor>& q_rows, double q, int64_t mask_spec) {
  TORCH_CHECK(delta.device().is_cpu(), "delta must be a CPU tensor");
  const int64_t row_len = check_prune_args(delta, p, offset, q_rows, q, mask_spec);
  mask_spec = effective_mask_spec(mask_spec, p);
  const int64_t n = delta.numel();
  if (n == 0) return at::empty({0}, delta.options());
  const at::Tensor x = delta.contiguous();
  if (mask_spec == kMaskSkip && p > 1.0 - kSkipWalkMaxRho) return seeded_pack_kept_only(x, p, seed, offset, q_rows, q, row_len);
  const KeepPlan plan = plan_keep_spec(mask_spec, p, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n);
  // Not fresh_output: on the AMD EPYC VM this pack (2^26 fp32, p = 0.5) took 192-200 ms with its
  // values on huge pages against 90-95 ms without, while the bitmask and CSR packs got 2x faster.
  at::Tensor values = at::empty({plan.total()}, delta.options());
  with_pack_data(x, values, q_rows, q, [&](const auto* src, auto* dst, const auto* qr, auto inv_scalar) {
    using acc_t = decltype(inv_scalar);
    at::parallel_for(0, plan.chunks(), 1, [&](int64_t c0, int64_t c1) {
      InverseQ<acc_t> inv{qr, row_len, inv_scalar};
      for (int64_t c = c0; c < c1; ++c) {
        for_each_kept_in_chunk(plan, c, src, [&](int64_t e, int64_t k) { dst[k] = prune_store(src[e], inv.at(e), true); });
      }
    });
  });
  return values;
}

// Spec v2: the rare elements of each stripe piece, counted by walking (no per-element work).
int64_t keep_count_skip(double p, uint64_t seed, uint64_t offset, int64_t n) {
  const SkipPlan plan(p);
  const int64_t pieces = n == 0 ? 0 : static_cast<int64_t>(((offset + static_cast<uint64_t>(n) - 1) >> kSkipStripeLog2) -
                                                          (offset >> kSkipStripeLog2)) + 1;
  std::vector<int64_t> rare(static_cast<size_t>(pieces), 0);
  at::parallel_for(0, pieces, 16, [&](int64_t b0, int64_t b1) {
    std::vector<int32_t> scratch(static_cast<size_t>(kSkipStripe));
    for (int64_t b = b0; b < b1; ++b) {
      const uint64_t stripe_start = ((offset >> kSkipStripeLog2) + static_cast<uint64_t>(b)) << kSkipStripeLog2;
      const int64_t begin = stripe_start > offset ? static_cast<int64_t>(stripe_start - offset) : 0;
      const int64_t end = std::min<int64_t>(n, static_cast<int64_t>(stripe_start + kSkipStripe - offset));
      rare[static_cast<size_t>(b)] =
          plan.rare_in(seed, offset + static_cast<uint64_t>(begin), static_cast<int32_t>(end - begin), scratch.data());
    }
  });
  int64_t total = 0;
  for (int64_t r : rare) total += r;
  return plan.rare_is_keep ? total : n - total;
}

at::Tensor keep_count_cpu(const at::Tensor& like, double p, int64_t seed, int64_t offset, int64_t mask_spec) {
  check_p(p);
  check_offset(offset);
  check_mask_spec(mask_spec);
  mask_spec = effective_mask_spec(mask_spec, p);
  const int64_t n = like.numel();
  if (mask_spec == kMaskSkip)
    return at::scalar_tensor(keep_count_skip(p, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n),
                             like.options().dtype(at::kLong));
  const uint32_t thr = drop_threshold(p);
  const int64_t chunks = (n + kStorageChunk - 1) / kStorageChunk;
  std::vector<int64_t> counts(static_cast<size_t>(chunks), 0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<uint64_t> scratch(static_cast<size_t>(kStorageChunk / 64));
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t s = c * kStorageChunk;
      counts[c] = keep_bits(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset) + static_cast<uint64_t>(s),
                            std::min(kStorageChunk, n - s), thr, scratch.data());
    }
  });
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  return at::scalar_tensor(total, like.options().dtype(at::kLong));
}

// Spec v2 with keep rare: the kept positions come from one stripe walk (RareList), whose total
// is checked before anything is written; then the add touches only the kept elements and the
// decode streams each piece out of an L1 stage. O(kept) work plus, for a decode, the write of
// the zeros; no packed bits of the whole tensor.
template <typename scalar_t>
void seeded_scatter_kept_only(scalar_t* dst, const scalar_t* src, int64_t values_n, double p, uint64_t seed,
                              uint64_t offset, int64_t n, double alpha, bool accumulate) {
  const SkipPlan plan(p);
  const RareList kept(plan, seed, offset, n);
  TORCH_CHECK_VALUE(kept.total() == values_n, "values has ", values_n, " entries but the seeded mask (p=", p,
                    ") keeps ", kept.total(), " of ", n);
  using acc_t = acc_of<scalar_t>;
  const acc_t a = static_cast<acc_t>(alpha);
  if (accumulate) {
    struct None {};
    const auto ahead = [&](int64_t begin, const uint16_t* pos, int32_t k) {
      for (int32_t j = 0; j < k; ++j) __builtin_prefetch(dst + begin + pos[j], 1, 3);
    };
    kept.for_each<None>(ahead, [&](None&, int64_t begin, int32_t, const uint16_t* pos, int32_t k, int64_t first) {
      scalar_t* d = dst + begin;
      const scalar_t* v = src + first;
      for (int32_t j = 0; j < k; ++j) d[pos[j]] = add_scaled(d[pos[j]], v[j], a);
    });
    return;
  }
  struct Stage {
    std::unique_ptr<StreamStage<scalar_t, kSkipStripe>> s = std::make_unique<StreamStage<scalar_t, kSkipStripe>>();
  };
  const auto nothing_ahead = [](int64_t, const uint16_t*, int32_t) {};  // a decode reads no lines of dst
  kept.for_each<Stage>(nothing_ahead, [&](Stage& stage, int64_t begin, int32_t count, const uint16_t* pos, int32_t k, int64_t first) {
    const scalar_t* v = src + first;
    for (int32_t j = 0; j < k; ++j) stage.s->buf[pos[j]] = v[j];
    stage.s->flush(dst + begin, count, pos, k);
  });
}

void seeded_scatter_cpu(at::Tensor& out, const at::Tensor& values, double p, int64_t seed,
                        int64_t offset, double alpha, bool accumulate, int64_t mask_spec) {
  TORCH_CHECK(out.device().is_cpu(), "out must be a CPU tensor");
  check_values_for(out, values);
  check_p(p);
  check_offset(offset);
  check_mask_spec(mask_spec);
  check_scatter_scalars(alpha);
  mask_spec = effective_mask_spec(mask_spec, p);
  const int64_t n = out.numel();
  if (mask_spec == kMaskSkip && p > 1.0 - kSkipWalkMaxRho && n > 0) {  // the walk, keep rare: no bits, O(kept)
    const at::Tensor v = values.contiguous();
    at::Tensor work = out.is_contiguous() ? out : out.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_seeded_scatter_cpu", [&] {
      seeded_scatter_kept_only<scalar_t>(work.data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), v.numel(), p,
                                         static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n, alpha,
                                         accumulate);
    });
    if (!work.is_same(out)) out.copy_(work);
    return;
  }
  const KeepPlan plan = plan_keep_spec(mask_spec, p, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n);
  TORCH_CHECK_VALUE(plan.total() == values.numel(), "values has ", values.numel(),
                    " entries but the seeded mask (p=", p, ") keeps ", plan.total(), " of ", n);
  if (n == 0) return;
  const at::Tensor v = values.contiguous();
  at::Tensor work = out.is_contiguous() ? out : out.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_seeded_scatter_cpu", [&] {
    const scalar_t* src = v.const_data_ptr<scalar_t>();
    scalar_t* dst = work.data_ptr<scalar_t>();
    const uint8_t* bits = reinterpret_cast<const uint8_t*>(plan.bits.get());
    at::parallel_for(0, plan.chunks(), 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t s = c * kStorageChunk;
        scatter_bits(bits + s / 8, std::min(kStorageChunk, n - s), src + plan.starts[c], dst + s, alpha,
                     accumulate);
      }
    });
  });
  if (!work.is_same(out)) out.copy_(work);
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CPU, m) {
  m.impl("seeded_pack", &seeded_pack_cpu);
  m.impl("keep_count", &keep_count_cpu);
  m.impl("seeded_scatter_", &seeded_scatter_cpu);
}

}  // namespace darex::cpu
