// CPU kernels of the seeded DARE ops. Spec v1: words come from philox_fill (vectorized) into a
// small L1-resident buffer, then one tight loop per op applies the mask. Spec v2 (skip_walk.h):
// when the rare outcome is keep, the ops touch only the kept elements (and zero-fill or copy the
// rest at memset / memcpy speed); otherwise the stripe's keep test becomes 0/1 words for the same
// tight loops. Work is split over threads by element range; the mask depends only on (seed,
// index), so the split never shows.
#include "isa.h"  // first: its GCC 12 workaround must precede the intrinsic headers

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "../common/abs_sum.h"
#include "../common/dare_math.h"
#include "../ops/fresh_output.h"
#include "../ops/prune_args.h"
#include "inverse_q.h"
#include "philox_fill.h"
#include "skip_walk.h"
#include "stream_store.h"

// The element loops, compiled once per instruction set (see prune_spans.inc).
#define DAREX_ISA_SPANS "prune_spans.inc"
#include "isa.h"

namespace darex::cpu {
namespace {

constexpr int64_t kWords = 2048;       // words per buffer fill (8 KiB, stays in L1)
constexpr int64_t kGrain = 1 << 16;    // elements per parallel task, at least

// Calls f(chunk_start, count, words) over [0, n) in parallel, kWords at a time.
template <typename F>
void for_each_word_chunk(uint64_t seed, uint64_t offset, int64_t n, const F& f) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    alignas(64) uint32_t words[kWords];
    for (int64_t s = begin; s < end; s += kWords) {
      const int64_t count = std::min(kWords, end - s);
      philox_fill(seed, offset + static_cast<uint64_t>(s), count, words);
      f(s, count, words);
    }
  });
}

// Calls f(chunk_start, count, words, thr) over [0, n) in parallel: element chunk_start + k is
// kept iff words[k] >= thr, under either mask spec.
template <typename F>
void for_each_mask_chunk(int64_t mask_spec, double p, uint64_t seed, uint64_t offset, int64_t n, const F& f) {
  if (mask_spec == kMaskPhilox) {
    const uint32_t thr = drop_threshold(p);
    for_each_word_chunk(seed, offset, n, [&](int64_t s, int64_t count, const uint32_t* u) { f(s, count, u, thr); });
    return;
  }
  const SkipPlan plan(p);
  for_each_stripe_piece(offset, n, kGrain, [&](int64_t s, int32_t count) {
    alignas(64) uint32_t words[kSkipStripe];
    int32_t scratch[kSkipStripe];
    plan.keep_words(seed, offset + static_cast<uint64_t>(s), count, words, scratch);
    f(s, static_cast<int64_t>(count), static_cast<const uint32_t*>(words), kSkipWordThreshold);
  });
}

// Spec v2 with keep rare: touching only the kept elements (and memset / memcpy of the runs
// between them) beats the dense loop. mask_spec is already resolved (effective_mask_spec), so
// kMaskSkip here means the walk, p < 1/8 or p > 7/8, and this is its keep-rare side.
inline bool kept_only_pays(int64_t mask_spec, double p) {
  return mask_spec == kMaskSkip && p > 1.0 - kSkipWalkMaxRho;
}

// Splits [start, start + count) at row boundaries: f(row, local_begin, length).
template <typename F>
inline void for_each_row_piece(int64_t start, int64_t count, int64_t row_len, const F& f) {
  int64_t j = 0;
  while (j < count) {
    const int64_t row = (start + j) / row_len;
    const int64_t stop = std::min(count, (row + 1) * row_len - start);
    f(row, j, stop - j);
    j = stop;
  }
}

// Runs `span(local_begin, length, inv)` for each piece with a constant 1/q.
template <typename acc_t, typename F>
inline void with_inverse_q(int64_t s, int64_t count, int64_t row_len, const acc_t* q_rows,
                           acc_t inv_scalar, const F& span) {
  if (q_rows == nullptr) {
    span(0, count, inv_scalar);
    return;
  }
  for_each_row_piece(s, count, row_len, [&](int64_t row, int64_t j, int64_t len) {
    span(j, len, inverse_q<acc_t>(q_rows[row]));
  });
}

// Calls span(start, words, length, inv) over [0, n) in parallel: the mask words of each piece
// and the 1/q of its row (or the scalar 1/q), as prune_ and dare share them.
template <typename acc_t, typename F>
void for_each_scaled_span(int64_t mask_spec, double p, int64_t seed, int64_t offset, int64_t n, int64_t row_len,
                          const std::optional<at::Tensor>& q_rows, double q, const F& span) {
  const acc_t* qr = q_rows ? q_rows->data_ptr<acc_t>() : nullptr;
  const acc_t inv = inverse_q<acc_t>(static_cast<acc_t>(q));
  for_each_mask_chunk(mask_spec, p, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n,
                      [&](int64_t s, int64_t count, const uint32_t* u, uint32_t thr) {
                        with_inverse_q<acc_t>(s, count, row_len, qr, inv, [&](int64_t j, int64_t len, acc_t iv) {
                          span(s + j, u + j, len, iv, thr);
                        });
                      });
}

// Spec v2: f(s, count, rare, k) per stripe piece, rare[0..k) the piece-relative indices of its
// rare elements (the kept ones when keep is rare).
template <typename F>
void for_each_rare_piece(const SkipPlan& plan, uint64_t seed, uint64_t offset, int64_t n, const F& f) {
  for_each_stripe_piece(offset, n, kGrain, [&](int64_t s, int32_t count) {
    int32_t rare[kSkipStripe];
    const int32_t k = plan.rare_in(seed, offset + static_cast<uint64_t>(s), count, rare);
    f(s, count, static_cast<const int32_t*>(rare), k);
  });
}

// Does nothing: for_each_rare_piece_ahead's `ahead` where the hardware prefetches already.
inline void no_prefetch(int64_t, const int32_t*, int32_t) {}

// prune_ when keep is rare. Where few cache lines hold a kept element (fp32 / fp64 at p = 0.99),
// each stripe piece is built in an L1 stage (+0.0 but the rescaled kept values) and streamed out
// whole: the zeros cost one write and no read, and the kept lines, prefetched a piece ahead, are
// the only reads. Otherwise (bf16 / fp16: 27.5% of lines at p = 0.99) a plain fill of the runs
// between kept elements, which reads every line in order, measured faster.
template <typename scalar_t, typename acc_t>
void prune_kept_only(scalar_t* x, const SkipPlan& plan, uint64_t seed, uint64_t offset, int64_t n,
                     int64_t row_len, const acc_t* qr, acc_t inv_scalar) {
  const bool stream = streaming_pays(plan.rho, sizeof(scalar_t));  // plan.rho is the keep rate here
  const auto prefetch_kept = [&](int64_t s, const int32_t* kept, int32_t k) {
    for (int32_t j = 0; j < k; ++j) __builtin_prefetch(x + s + kept[j], 1, 3);
  };
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    if (!stream) {
      for_each_rare_piece_ahead(plan, seed, offset, begin, end, no_prefetch,
                                [&](int64_t s, int32_t count, const int32_t* kept, int32_t k) {
        InverseQ<acc_t> inv{qr, row_len, inv_scalar};
        scalar_t* xs = x + s;
        int32_t prev = 0;
        for (int32_t j = 0; j < k; ++j) {
          const int32_t r = kept[j];
          std::memset(static_cast<void*>(xs + prev), 0, sizeof(scalar_t) * static_cast<size_t>(r - prev));  // +0.0
          xs[r] = prune_store(xs[r], inv.at(s + r), true);
          prev = r + 1;
        }
        std::memset(static_cast<void*>(xs + prev), 0, sizeof(scalar_t) * static_cast<size_t>(count - prev));
      });
      return;
    }
    auto stage = std::make_unique<StreamStage<scalar_t, kSkipStripe>>();
    for_each_rare_piece_ahead(plan, seed, offset, begin, end, prefetch_kept,
                              [&](int64_t s, int32_t count, const int32_t* kept, int32_t k) {
      InverseQ<acc_t> inv{qr, row_len, inv_scalar};
      scalar_t* xs = x + s;
      for (int32_t j = 0; j < k; ++j) stage->buf[kept[j]] = prune_store(xs[kept[j]], inv.at(s + kept[j]), true);
      stage->flush(xs, count, kept, k);
    });
  });
}

// dare when keep is rare; every kept result is computed before out is written (out may alias
// finetuned). Out is base: only the kept elements are read and written, their lines prefetched
// a piece ahead. Otherwise base's piece is copied into an L1 stage, the kept results placed in
// it, and the stage streamed out to out.
template <typename scalar_t, typename acc_t>
void dare_kept_only(const scalar_t* f, const scalar_t* b, scalar_t* o, const SkipPlan& plan, uint64_t seed,
                    uint64_t offset, int64_t n, int64_t row_len, const acc_t* qr, acc_t inv_scalar) {
  const auto prefetch_kept = [&](int64_t s, const int32_t* kept, int32_t k) {
    for (int32_t j = 0; j < k; ++j) {
      __builtin_prefetch(f + s + kept[j], 0, 3);
      if (o == b) __builtin_prefetch(b + s + kept[j], 1, 3);
    }
  };
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    auto stage = o == b ? nullptr : std::make_unique<StreamStage<scalar_t, kSkipStripe>>();
    for_each_rare_piece_ahead(plan, seed, offset, begin, end, prefetch_kept,
                              [&](int64_t s, int32_t count, const int32_t* kept, int32_t k) {
      InverseQ<acc_t> inv{qr, row_len, inv_scalar};
      if (o == b) {
        for (int32_t j = 0; j < k; ++j) {
          const int64_t e = s + kept[j];
          o[e] = dare_store(f[e], o[e], inv.at(e), true);
        }
        return;
      }
      scalar_t* st = stage->buf;
      std::memcpy(static_cast<void*>(st), b + s, sizeof(scalar_t) * static_cast<size_t>(count));
      for (int32_t j = 0; j < k; ++j) st[kept[j]] = dare_store(f[s + kept[j]], b[s + kept[j]], inv.at(s + kept[j]), true);
      stream_copy(o + s, st, sizeof(scalar_t) * static_cast<size_t>(count));
      // the stage holds base values now, not only kept ones: clear all of it for the next piece
      std::memset(static_cast<void*>(st), 0, sizeof(scalar_t) * static_cast<size_t>(count));
    });
  });
}

void prune_cpu(at::Tensor& delta, double p, int64_t seed, int64_t offset,
               const std::optional<at::Tensor>& q_rows, double q, int64_t mask_spec) {
  TORCH_CHECK(delta.device().is_cpu(), "delta must be a CPU tensor");
  const int64_t row_len = check_prune_args(delta, p, offset, q_rows, q, mask_spec);
  mask_spec = effective_mask_spec(mask_spec, p);
  const int64_t n = delta.numel();
  if (n == 0) return;
  at::Tensor work = delta.is_contiguous() ? delta : delta.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_prune_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    scalar_t* x = work.data_ptr<scalar_t>();
    if (kept_only_pays(mask_spec, p)) {
      prune_kept_only<scalar_t, acc_t>(x, SkipPlan(p), static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n,
                                       row_len, q_rows ? q_rows->data_ptr<acc_t>() : nullptr,
                                       inverse_q<acc_t>(static_cast<acc_t>(q)));
      return;
    }
    for_each_scaled_span<acc_t>(mask_spec, p, seed, offset, n, row_len, q_rows, q,
                                [&](int64_t i, const uint32_t* u, int64_t len, acc_t iv, uint32_t thr) {
                                  DAREX_ISA_CALL(prune_span, x + i, u, len, thr, iv);
                                });
  });
  if (!work.is_same(delta)) delta.copy_(work);
}

void dare_out_cpu(const at::Tensor& finetuned, const at::Tensor& base, double p, int64_t seed,
                  int64_t offset, const std::optional<at::Tensor>& q_rows, double q,
                  at::Tensor& out, int64_t mask_spec) {
  TORCH_CHECK(finetuned.device().is_cpu(), "finetuned must be a CPU tensor");
  const int64_t row_len = check_dare_args(finetuned, base, p, offset, q_rows, q, out, mask_spec);
  mask_spec = effective_mask_spec(mask_spec, p);
  const int64_t n = finetuned.numel();
  if (n == 0) return;
  const at::Tensor ft = finetuned.contiguous();
  const at::Tensor bs = base.contiguous();
  at::Tensor dst = out.is_contiguous() ? out : at::empty(out.sizes(), out.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ft.scalar_type(), "darex_dare_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const scalar_t* f = ft.data_ptr<scalar_t>();
    const scalar_t* b = bs.data_ptr<scalar_t>();
    scalar_t* o = dst.data_ptr<scalar_t>();
    if (kept_only_pays(mask_spec, p)) {
      dare_kept_only<scalar_t, acc_t>(f, b, o, SkipPlan(p), static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                                      n, row_len, q_rows ? q_rows->data_ptr<acc_t>() : nullptr,
                                      inverse_q<acc_t>(static_cast<acc_t>(q)));
      return;
    }
    for_each_scaled_span<acc_t>(mask_spec, p, seed, offset, n, row_len, q_rows, q,
                                [&](int64_t i, const uint32_t* u, int64_t len, acc_t iv, uint32_t thr) {
                                  DAREX_ISA_CALL(dare_span, f + i, b + i, o + i, u, len, thr, iv);
                                });
  });
  if (!dst.is_same(out)) out.copy_(dst);
}

at::Tensor keep_mask_cpu(const at::Tensor& like, double p, int64_t seed, int64_t offset, int64_t mask_spec) {
  check_p(p);
  check_offset(offset);
  check_mask_spec(mask_spec);
  mask_spec = effective_mask_spec(mask_spec, p);
  at::Tensor mask = fresh_output(like.sizes(), like.options().dtype(at::kBool));
  const int64_t n = mask.numel();
  if (n == 0) return mask;
  bool* m = mask.data_ptr<bool>();
  if (mask_spec == kMaskSkip) {  // fill with the common outcome, then flip the rare elements
    const SkipPlan plan(p);
    for_each_rare_piece(plan, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n,
                        [&](int64_t s, int32_t count, const int32_t* rare, int32_t k) {
                          std::memset(m + s, plan.rare_is_keep ? 0 : 1, static_cast<size_t>(count));
                          for (int32_t j = 0; j < k; ++j) m[s + rare[j]] = plan.rare_is_keep;
                        });
    return mask;
  }
  const uint32_t thr = drop_threshold(p);
  for_each_word_chunk(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n,
                      [&](int64_t s, int64_t count, const uint32_t* u) {
                        DAREX_ISA_CALL(mask_span, m + s, u, count, thr);
                      });
  return mask;
}

// Lane tree of common/abs_sum.h: lanes[0] becomes the chunk's sum.
inline void lane_tree(double* lanes) {
  for (int64_t s = kAbsSumLanes / 2; s > 0; s /= 2)
    for (int64_t j = 0; j < s; ++j) lanes[j] += lanes[j + s];
}

// The sums in the fixed order of common/abs_sum.h: chunks in parallel, lanes within a chunk,
// then the chunk sums in index order, so no thread count changes a bit.
at::Tensor kept_abs_sum_cpu(const at::Tensor& delta, double p, int64_t seed, int64_t offset, int64_t mask_spec) {
  TORCH_CHECK(delta.device().is_cpu(), "delta must be a CPU tensor");
  check_prune_args(delta, p, offset, std::nullopt, 1.0, mask_spec);
  mask_spec = effective_mask_spec(mask_spec, p);
  at::Tensor result = at::zeros({2}, delta.options().dtype(at::kDouble));
  const int64_t n = delta.numel();
  if (n == 0) return result;
  const at::Tensor x = delta.contiguous();
  const bool skip = mask_spec == kMaskSkip;
  const uint32_t thr = skip ? kSkipWordThreshold : drop_threshold(p);
  const std::optional<SkipPlan> plan = skip ? std::optional<SkipPlan>(SkipPlan(p)) : std::nullopt;
  const int64_t chunks = (n + kAbsSumChunk - 1) / kAbsSumChunk;
  std::vector<double> kept(static_cast<size_t>(chunks)), total(static_cast<size_t>(chunks));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_kept_abs_sum_cpu", [&] {
    const scalar_t* v = x.data_ptr<scalar_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      alignas(64) uint32_t philox_words[kAbsSumStep];
      alignas(64) double lk[kAbsSumLanes], lt[kAbsSumLanes];
      std::vector<uint32_t> chunk_words(skip ? static_cast<size_t>(kAbsSumChunk) : 0);
      std::vector<int32_t> scratch(skip ? static_cast<size_t>(kSkipStripe) : 0);
      for (int64_t c = c0; c < c1; ++c) {
        std::fill(lk, lk + kAbsSumLanes, 0.0);
        std::fill(lt, lt + kAbsSumLanes, 0.0);
        const int64_t end = std::min(n, (c + 1) * kAbsSumChunk);
        if (skip) {  // the chunk's keep words, one walk per stripe piece
          for (int64_t s = c * kAbsSumChunk; s < end;) {
            const uint64_t flat = static_cast<uint64_t>(offset) + static_cast<uint64_t>(s);
            const int64_t len = std::min<int64_t>(end - s, kSkipStripe - static_cast<int64_t>(flat & (kSkipStripe - 1)));
            plan->keep_words(static_cast<uint64_t>(seed), flat, static_cast<int32_t>(len),
                             chunk_words.data() + (s - c * kAbsSumChunk), scratch.data());
            s += len;
          }
        }
        for (int64_t s = c * kAbsSumChunk; s < end; s += kAbsSumStep) {
          const int64_t count = std::min(kAbsSumStep, end - s);
          const uint32_t* words = philox_words;
          if (skip) words = chunk_words.data() + (s - c * kAbsSumChunk);
          else philox_fill(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset) + static_cast<uint64_t>(s), count, philox_words);
          if (count == kAbsSumStep) {
            DAREX_ISA_CALL(abs_sum_step, v + s, words, thr, lk, lt);
            continue;
          }
          for (int64_t r = 0; r < count; ++r) {  // the tensor's last, partial step
            const double a = std::abs(static_cast<double>(v[s + r]));
            lt[r / kAbsSumGroup] += a;
            lk[r / kAbsSumGroup] += is_kept(words[r], thr) ? a : 0.0;
          }
        }
        lane_tree(lk);
        lane_tree(lt);
        kept[static_cast<size_t>(c)] = lk[0];
        total[static_cast<size_t>(c)] = lt[0];
      }
    });
  });
  double k = 0.0, t = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    k += kept[static_cast<size_t>(c)];
    t += total[static_cast<size_t>(c)];
  }
  double* r = result.data_ptr<double>();
  r[0] = to_storage<double>(k);
  r[1] = to_storage<double>(t);
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CPU, m) {
  m.impl("prune_", &prune_cpu);
  m.impl("dare_out", &dare_out_cpu);
  m.impl("keep_mask", &keep_mask_cpu);
  m.impl("kept_abs_sum", &kept_abs_sum_cpu);
}

}  // namespace darex::cpu
