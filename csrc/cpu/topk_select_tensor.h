// Radix select over a whole tensor, in parallel: a sample-guided select for large tensors, else
// per-thread histograms of the first digits, then the few candidates left are handed to the
// serial select (topk_select_rows.h).
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
#include "topk_select_rows.h"

namespace darex::cpu::topk {

// Growable key buffer without std::vector's zero-fill, for branch-free compaction.
template <typename U>
struct KeyBuffer {
  std::unique_ptr<U[]> data;
  int64_t size = 0, capacity = 0;
  U* grow(int64_t extra) {  // room for `extra` more keys at data + size
    if (size + extra > capacity) {
      const int64_t next = std::max(size + extra, 2 * capacity + 4096);
      std::unique_ptr<U[]> bigger(new U[static_cast<size_t>(next)]);
      if (size) std::memcpy(bigger.get(), data.get(), static_cast<size_t>(size) * sizeof(U));
      data = std::move(bigger);
      capacity = next;
    }
    return data.get() + size;
  }
};

// Sample-guided select (Floyd-Rivest style) for large tensors: a strided sample of keys brackets
// the k-th key in [lo, hi]; ONE pass over the tensor counts keys above hi and collects the few
// in [lo, hi]; the exact radix select then runs on those alone. Returns false (and the caller
// falls back to full radix passes) when the bracket misses or collects too much.
template <typename Keys, typename U = decltype(std::declval<Keys>().key(0))>
bool select_by_sample(const Keys& keys, int64_t n, int64_t k, Selection<U>& result) {
  constexpr int64_t kSample = 1 << 16;
  constexpr int64_t kGrain = 1 << 16;
  if (n < 16 * kSample) return false;
  std::vector<U> sample(static_cast<size_t>(kSample));
  for (int64_t j = 0; j < kSample; ++j) sample[static_cast<size_t>(j)] = keys.key(j * (n / kSample) + (n / kSample) / 2);
  std::sort(sample.begin(), sample.end(), std::greater<U>());
  // Expected sample rank of the k-th largest key, +- 4.5 standard deviations and a little.
  const double r = static_cast<double>(k) * kSample / static_cast<double>(n);
  const double margin = 4.5 * std::sqrt(r * (1.0 - r / kSample) + 1.0) + 8.0;
  const int64_t r_hi = static_cast<int64_t>(r - margin), r_lo = static_cast<int64_t>(r + margin);
  const U hi = r_hi < 0 ? static_cast<U>(~U(0)) : sample[static_cast<size_t>(r_hi)];
  const U lo = r_lo >= kSample ? U(0) : sample[static_cast<size_t>(r_lo)];
  const int64_t cap = n / 16;  // extra memory stays at most 1/16 of the keys
  const int threads = at::get_num_threads();
  std::vector<KeyBuffer<U>> picked(static_cast<size_t>(threads));
  std::vector<int64_t> above(static_cast<size_t>(threads)), nans(static_cast<size_t>(threads));
  std::atomic<int64_t> collected{0};
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    const size_t t = static_cast<size_t>(at::get_thread_num());
    auto& out = picked[t];
    int64_t up = 0, bad = 0;
    const int64_t before = out.size;
    // Locals, so the compiler need not reload them around push_back's stores.
    const Keys kk = keys;
    const U top = hi, bottom = lo;
    // Small blocks: a branch-free loop the compiler vectorizes computes the keys and the
    // counts; only blocks that hold a candidate (a minority, at 32 keys per block) run the
    // branch-free scalar compaction into the buffer.
    constexpr int64_t kBlock = 32;
    U block[kBlock];
    for (int64_t s = begin; s < end; s += kBlock) {
      const int64_t m = std::min(kBlock, end - s);
      int64_t in = 0;
      for (int64_t j = 0; j < m; ++j) {
        const U key = kk.key(s + j);
        block[j] = key;
        bad += kk.nan(s + j);
        up += key > top;
        in += (key >= bottom) & (key <= top);
      }
      if (in == 0) continue;
      U* dst = out.grow(m);
      int64_t c = 0;
      for (int64_t j = 0; j < m; ++j) {
        dst[c] = block[j];
        c += (block[j] >= bottom) & (block[j] <= top);
      }
      out.size += c;
    }
    above[t] += up;
    nans[t] += bad;
    if ((collected += out.size - before) > cap) out = KeyBuffer<U>();  // result discarded: free early
  });
  int64_t nan_count = 0, count_above = 0;
  for (int t = 0; t < threads; ++t) {
    nan_count += nans[static_cast<size_t>(t)];
    count_above += above[static_cast<size_t>(t)];
  }
  raise_on_nan<U>(nan_count);
  if (collected.load() > cap) return false;
  std::vector<U> all;
  all.reserve(static_cast<size_t>(collected.load()));
  for (auto& v : picked) all.insert(all.end(), v.data.get(), v.data.get() + v.size);
  const int64_t need = k - count_above;  // to be taken among the collected keys
  if (need < 1 || need > static_cast<int64_t>(all.size())) return false;
  int64_t no_nans = 0;
  const Selection<U> inner = select_serial(CollectedKeys<U>{all.data()}, static_cast<int64_t>(all.size()), need, no_nans);
  result = {inner.threshold, k - inner.need_eq, inner.need_eq};
  return true;
}

// Parallel radix select over a whole tensor. Pass 0 histograms everything; pass 1 then copies
// the keys that share the chosen top digit into a small buffer (when they are few, as for any
// spread-out data) so the remaining passes never touch the tensor again.
template <typename Keys, typename U = decltype(std::declval<Keys>().key(0))>
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
      // Candidates of the current prefix: exactly `candidates` keys.
      int64_t candidates = 0;
      for (const auto& h : local) candidates += h[radix_digit<U>(prefix, 0)];
      if (candidates <= n / 16) {
        std::vector<std::vector<U>> picked(static_cast<size_t>(threads));
        const U mask = radix_prefix_mask<U>(1);
        at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
          auto& out = picked[static_cast<size_t>(at::get_thread_num())];
          for (int64_t i = begin; i < end; ++i) {
            const U key = keys.key(i);
            if ((key & mask) == prefix) out.push_back(key);
          }
        });
        std::vector<U> all;
        all.reserve(static_cast<size_t>(candidates));
        for (auto& v : picked) all.insert(all.end(), v.begin(), v.end());
        int64_t no_nans = 0;
        const Selection<U> rest = select_serial(CollectedKeys<U>{all.data()}, static_cast<int64_t>(all.size()),
                                                remaining, no_nans, 1, prefix);
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

}  // namespace darex::cpu::topk
