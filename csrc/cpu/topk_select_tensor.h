// Radix select over a whole tensor, in parallel: a sample-guided select for large tensors, else
// per-thread histograms of the first digits, then the few candidates left are handed to the
// serial select (topk_select_rows.h). Extra memory is bounded whatever the data: keys are only
// ever gathered into a buffer of at most about n / 50 of them; ties and crowded digits are
// counted, never collected.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "../common/radix_key.h"
#include "isa.h"  // DAREX_ISA_CALL: the span loops come from topk_spans.inc, via topk_kernel.cpp
#include "topk_select_rows.h"

namespace darex::cpu::topk {
// Internal linkage: these phases are included by topk_kernel.cpp alone, and GCC inlines and
// specializes them there as it did when they were one file (named linkage cost the per-row
// select 5-10%).
namespace {

// Keys gathered from many threads into one buffer of at most `cap` keys, in no particular order
// (a select needs only their multiset). Each thread compacts a span of at most kGatherSpan
// elements into its own staging block, then reserves room here; once the total would pass `cap`
// the gather has failed and stops. Extra memory: cap + threads * kGatherSpan keys, whatever the
// data (a buffer that grew with the candidates made mostly-zero tensors cost twice their size).
constexpr int64_t kGatherSpan = 1 << 14;

template <typename U>
class Gather {
 public:
  explicit Gather(int64_t cap) : cap_(cap), data_(new U[static_cast<size_t>(cap)]) {}
  // Appends c keys; false once the gather has failed (then the caller stops scanning).
  bool append(const U* src, int64_t c) {
    if (failed()) return false;
    if (c == 0) return true;
    const int64_t at = size_.fetch_add(c, std::memory_order_relaxed);
    if (at + c > cap_) {
      failed_.store(true, std::memory_order_relaxed);
      return false;
    }
    std::memcpy(data_.get() + at, src, static_cast<size_t>(c) * sizeof(U));
    return true;
  }
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  // Valid after the parallel region, when the gather did not fail.
  int64_t size() const { return size_.load(); }
  const U* data() const { return data_.get(); }

 private:
  int64_t cap_;
  std::unique_ptr<U[]> data_;  // not zero-filled: only the gathered prefix is ever touched
  std::atomic<int64_t> size_{0};
  std::atomic<bool> failed_{false};
};

template <typename Keys, typename U = decltype(std::declval<Keys>().key(0))>
Selection<U> select_parallel(const Keys& keys, int64_t n, int64_t k);

// Gathered keys from which their select runs on every thread.
constexpr int64_t kParallelCollected = 1 << 17;

// Sample-guided select (Floyd-Rivest style) for large tensors: a strided sample of keys brackets
// the k-th key in [lo, hi]; ONE pass over the tensor counts the keys above hi, equal to hi and
// equal to lo, and gathers the few strictly between; the exact radix select then runs on those
// alone. Ties at either end of the bracket are only counted, so a tensor of few distinct values
// (all zeros, a mostly-zero delta) gathers nothing. Returns false (and the caller falls back to
// full radix passes) when the bracket misses or would gather more than spread-out data would.
template <typename Keys, typename U = decltype(std::declval<Keys>().key(0))>
bool select_by_sample(const Keys& keys, int64_t n, int64_t k, Selection<U>& result) {
  constexpr int64_t kSample = 1 << 16;
  constexpr int64_t kGrain = 1 << 16;
  if (n < 16 * kSample) return false;
  // Every sample is a cache miss of its own: read them on all threads.
  std::vector<U> sample(static_cast<size_t>(2 * kSample));
  const int64_t stride = n / kSample;
  at::parallel_for(0, kSample, 1 << 12, [&](int64_t j0, int64_t j1) {
    const Keys kk = keys;
    for (int64_t j = j0; j < j1; ++j) sample[static_cast<size_t>(j)] = kk.key(j * stride + stride / 2);
  });
  const Bracket<U> b = bracket_from_sample(sample.data(), sample.data() + kSample, kSample, k, n);
  const U hi = b.hi, lo = b.lo;
  sample = std::vector<U>();
  const int threads = at::get_num_threads();
  // Keys strictly inside the bracket: about b.width / kSample of n where the data near the
  // cut is spread out (fewer with ties, which are only counted); 15% and a span of slack put a
  // miss over 5 standard deviations away. At most about 2% of n (at k = n / 2), whatever the data.
  const int64_t cap = static_cast<int64_t>(1.15 * static_cast<double>(b.width) / kSample * static_cast<double>(n)) +
                      kGatherSpan;
  Gather<U> inside(std::min(cap, n));
  std::vector<int64_t> above(static_cast<size_t>(threads)), at_hi(static_cast<size_t>(threads)),
      at_lo(static_cast<size_t>(threads)), nans(static_cast<size_t>(threads));
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    const size_t t = static_cast<size_t>(at::get_thread_num());
    std::unique_ptr<U[]> stage(new U[static_cast<size_t>(kGatherSpan + kCompactSlack)]);
    int64_t counts[4] = {0, 0, 0, 0};  // above hi, == hi, == lo, NaN
    for (int64_t span = begin; span < end; span += kGatherSpan) {
      const int64_t span_end = std::min(end, span + kGatherSpan);
      int64_t staged = 0;
      DAREX_ISA_CALL_RESULT(staged, bracket_span, keys, span, span_end, hi, lo, stage.get(), counts);
      if (!inside.append(stage.get(), staged)) break;  // too many: the result is discarded
    }
    above[t] += counts[0];
    at_hi[t] += counts[1];
    at_lo[t] += counts[2];
    nans[t] += counts[3];
  });
  if (inside.failed()) return false;  // NaN, if any, is raised by the fallback's first pass
  int64_t nan_count = 0, count_above = 0, count_hi = 0, count_lo = 0;
  for (size_t t = 0; t < static_cast<size_t>(threads); ++t) {
    nan_count += nans[t];
    count_above += above[t];
    count_hi += at_hi[t];
    count_lo += at_lo[t];
  }
  raise_on_nan<U>(nan_count);
  // Many gathered keys (low-precision scores, wide brackets) are selected on every thread.
  const int64_t gathered = inside.size();
  const CollectedKeys<U> collected{inside.data()};
  return resolve_bracket(b, k, count_above, count_hi, gathered, count_lo, [&](int64_t need) {
    int64_t no_nans = 0;
    return gathered >= kParallelCollected ? select_parallel(collected, gathered, need)
                                          : select_serial(collected, gathered, need, no_nans);
  }, result);
}

// Keys whose fixed prefix after `passes` passes equals `prefix`, gathered in parallel into
// exactly `count` (their number, from the histograms) slots.
template <typename Keys, typename U = decltype(std::declval<Keys>().key(0))>
void gather_prefix(const Keys& keys, int64_t n, int passes, U prefix, Gather<U>& out) {
  const U mask = radix_prefix_mask<U>(passes);
  at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
    std::unique_ptr<U[]> stage(new U[static_cast<size_t>(kGatherSpan)]);
    const Keys kk = keys;
    for (int64_t span = begin; span < end; span += kGatherSpan) {
      const int64_t span_end = std::min(end, span + kGatherSpan);
      int64_t staged = 0;
      for (int64_t i = span; i < span_end; ++i) {
        const U key = kk.key(i);
        stage[static_cast<size_t>(staged)] = key;
        staged += (key & mask) == prefix;
      }
      if (!out.append(stage.get(), staged)) break;
    }
  });
  TORCH_INTERNAL_ASSERT(!out.failed(), "radix select: more candidates than counted");
}

// Parallel radix select over a whole tensor. Pass 0 histograms everything; pass 1 then gathers
// the keys that share the chosen top digit into a small buffer (when they are at most n / 64)
// so the remaining passes never touch the tensor again.
template <typename Keys, typename U>
Selection<U> select_parallel(const Keys& keys, int64_t n, int64_t k) {
  constexpr int64_t kGrain = 1 << 16;
  if (Selection<U> sel; select_by_sample(keys, n, k, sel)) return sel;
  const int threads = at::get_num_threads();
  std::vector<Histogram> local(static_cast<size_t>(threads));
  std::vector<int64_t> local_nans(static_cast<size_t>(threads));
  U prefix = 0;
  int64_t remaining = k;
  for (int pass = 0; pass < radix_passes<U>(); ++pass) {
    Histogram total;
    total.fill(0);
    if (pass == 1) {
      // Candidates of the current prefix: exactly `candidates` keys. Gathered only when few
      // (as for any spread-out data), so the extra memory stays a small fraction of the tensor.
      int64_t candidates = 0;
      for (const auto& h : local) candidates += h[radix_digit<U>(prefix, 0)];
      if (candidates <= n / 64) {
        Gather<U> picked(candidates);
        gather_prefix(keys, n, 1, prefix, picked);
        int64_t no_nans = 0;
        const Selection<U> rest =
            select_serial(CollectedKeys<U>{picked.data()}, candidates, remaining, no_nans, 1, prefix);
        return {rest.threshold, k - rest.need_eq, rest.need_eq};
      }
    }
    for (auto& h : local) h.fill(0);
    const U want = prefix;
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      const size_t t = static_cast<size_t>(at::get_thread_num());
      count_digits(keys, begin, end, pass, want, local[t], local_nans[t]);
    });
    if (pass == 0) {
      int64_t nans = 0;
      for (int64_t v : local_nans) nans += v;
      raise_on_nan<U>(nans);
    }
    for (const auto& h : local)
      for (int d = 0; d < kRadixBins; ++d) total[d] += h[d];
    take_digit<U>(total, pass, prefix, remaining);
  }
  return {prefix, k - remaining, remaining};
}

}  // namespace
}  // namespace darex::cpu::topk
