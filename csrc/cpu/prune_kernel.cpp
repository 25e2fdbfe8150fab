// CPU kernels of the seeded DARE ops: words come from philox_fill (vectorized) into a small
// L1-resident buffer, then one tight loop per op applies the mask. Work is split over threads
// by element range; every word depends only on (seed, index), so the split never shows.
#include "isa.h"  // first: its GCC 12 workaround must precede the intrinsic headers

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/abs_sum.h"
#include "../common/dare_math.h"
#include "../ops/prune_args.h"
#include "philox_fill.h"

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
void for_each_scaled_span(int64_t seed, int64_t offset, int64_t n, int64_t row_len,
                          const std::optional<at::Tensor>& q_rows, double q, const F& span) {
  const acc_t* qr = q_rows ? q_rows->data_ptr<acc_t>() : nullptr;
  const acc_t inv = inverse_q<acc_t>(static_cast<acc_t>(q));
  for_each_word_chunk(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n,
                      [&](int64_t s, int64_t count, const uint32_t* u) {
                        with_inverse_q<acc_t>(s, count, row_len, qr, inv, [&](int64_t j, int64_t len, acc_t iv) {
                          span(s + j, u + j, len, iv);
                        });
                      });
}

void prune_cpu(at::Tensor& delta, double p, int64_t seed, int64_t offset,
               const std::optional<at::Tensor>& q_rows, double q) {
  TORCH_CHECK(delta.device().is_cpu(), "delta must be a CPU tensor");
  const int64_t row_len = check_prune_args(delta, p, offset, q_rows, q);
  const int64_t n = delta.numel();
  if (n == 0) return;
  at::Tensor work = delta.is_contiguous() ? delta : delta.contiguous();
  const uint32_t thr = drop_threshold(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_prune_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    scalar_t* x = work.data_ptr<scalar_t>();
    for_each_scaled_span<acc_t>(seed, offset, n, row_len, q_rows, q,
                                [&](int64_t i, const uint32_t* u, int64_t len, acc_t iv) {
                                  DAREX_ISA_CALL(prune_span, x + i, u, len, thr, iv);
                                });
  });
  if (!work.is_same(delta)) delta.copy_(work);
}

void dare_out_cpu(const at::Tensor& finetuned, const at::Tensor& base, double p, int64_t seed,
                  int64_t offset, const std::optional<at::Tensor>& q_rows, double q,
                  at::Tensor& out) {
  TORCH_CHECK(finetuned.device().is_cpu(), "finetuned must be a CPU tensor");
  const int64_t row_len = check_dare_args(finetuned, base, p, offset, q_rows, q, out);
  const int64_t n = finetuned.numel();
  if (n == 0) return;
  const at::Tensor ft = finetuned.contiguous();
  const at::Tensor bs = base.contiguous();
  at::Tensor dst = out.is_contiguous() ? out : at::empty(out.sizes(), out.options());
  const uint32_t thr = drop_threshold(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ft.scalar_type(), "darex_dare_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const scalar_t* f = ft.data_ptr<scalar_t>();
    const scalar_t* b = bs.data_ptr<scalar_t>();
    scalar_t* o = dst.data_ptr<scalar_t>();
    for_each_scaled_span<acc_t>(seed, offset, n, row_len, q_rows, q,
                                [&](int64_t i, const uint32_t* u, int64_t len, acc_t iv) {
                                  DAREX_ISA_CALL(dare_span, f + i, b + i, o + i, u, len, thr, iv);
                                });
  });
  if (!dst.is_same(out)) out.copy_(dst);
}

at::Tensor keep_mask_cpu(const at::Tensor& like, double p, int64_t seed, int64_t offset) {
  check_p(p);
  check_offset(offset);
  at::Tensor mask = at::empty(like.sizes(), like.options().dtype(at::kBool));
  const int64_t n = mask.numel();
  if (n == 0) return mask;
  const uint32_t thr = drop_threshold(p);
  bool* m = mask.data_ptr<bool>();
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
at::Tensor kept_abs_sum_cpu(const at::Tensor& delta, double p, int64_t seed, int64_t offset) {
  TORCH_CHECK(delta.device().is_cpu(), "delta must be a CPU tensor");
  check_prune_args(delta, p, offset, std::nullopt, 1.0);
  at::Tensor result = at::zeros({2}, delta.options().dtype(at::kDouble));
  const int64_t n = delta.numel();
  if (n == 0) return result;
  const at::Tensor x = delta.contiguous();
  const uint32_t thr = drop_threshold(p);
  const int64_t chunks = (n + kAbsSumChunk - 1) / kAbsSumChunk;
  std::vector<double> kept(static_cast<size_t>(chunks)), total(static_cast<size_t>(chunks));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_kept_abs_sum_cpu", [&] {
    const scalar_t* v = x.data_ptr<scalar_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      alignas(64) uint32_t words[kAbsSumStep];
      alignas(64) double lk[kAbsSumLanes], lt[kAbsSumLanes];
      for (int64_t c = c0; c < c1; ++c) {
        std::fill(lk, lk + kAbsSumLanes, 0.0);
        std::fill(lt, lt + kAbsSumLanes, 0.0);
        const int64_t end = std::min(n, (c + 1) * kAbsSumChunk);
        for (int64_t s = c * kAbsSumChunk; s < end; s += kAbsSumStep) {
          const int64_t count = std::min(kAbsSumStep, end - s);
          philox_fill(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset) + static_cast<uint64_t>(s), count, words);
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
