// Radix select of one slice in one thread: every row of a per-row select, and the last passes
// of a whole-tensor select once its candidates are collected (topk_select_tensor.h). Keys come
// from a key source (common/topk_keys.h), computed from the data on the fly in every pass.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "../common/radix_key.h"

namespace darex::cpu::topk {
// Internal linkage: these phases are included by topk_kernel.cpp alone, and GCC inlines and
// specializes them there as it did when they were one file (named linkage cost the per-row
// select 5-10%).
namespace {

template <typename U>
struct Selection {
  U threshold;      // key of the k-th selected element
  int64_t beyond;   // elements with key > threshold (all selected)
  int64_t need_eq;  // elements with key == threshold to select, lowest indices first
};

using Histogram = std::array<int64_t, kRadixBins>;

// Finds the digit holding the k-th largest key among those counted; updates prefix and k.
template <typename U>
inline void take_digit(const Histogram& hist, int pass, U& prefix, int64_t& k) {
  int64_t above = 0;
  for (int d = kRadixBins - 1; d >= 0; --d) {
    if (above + hist[d] >= k) {
      k -= above;
      prefix |= radix_digit_bits<U>(static_cast<uint32_t>(d), pass);
      return;
    }
    above += hist[d];
  }
  TORCH_INTERNAL_ASSERT(false, "radix select: k exceeds the candidates");
}

template <typename U>
inline void raise_on_nan(int64_t nans) {
  TORCH_CHECK_VALUE(nans == 0, "scores contain ", nans, " NaN value(s); top-k needs ordered scores");
}

// Histogram of digit `pass` over keys i in [begin, end) whose fixed prefix matches `want`
// (pass 0: all keys, and NaNs are counted). Four interleaved sub-histograms: consecutive keys
// often share a bin (pass 0 sees mostly the exponent), and one counter would serialize them.
template <typename Keys, typename U = decltype(std::declval<Keys>().key(0))>
void count_digits(const Keys& keys, int64_t begin, int64_t end, int pass, U want, Histogram& out,
                  int64_t& nans) {
  constexpr int64_t kFlush = int64_t(1) << 30;  // keeps the uint32 sub-counters from overflowing
  const U mask = radix_prefix_mask<U>(pass);
  const Keys kk = keys;  // a local copy: no reloads of its pointers after histogram stores
  std::vector<uint32_t> sub(4 * kRadixBins);
  uint32_t* h = sub.data();
  for (int64_t s = begin; s < end; s += kFlush) {
    const int64_t e = std::min(end, s + kFlush);
    std::fill(sub.begin(), sub.end(), 0u);
    if (pass == 0) {
      int64_t bad = 0;
      for (int64_t i = s; i < e; ++i) {
        bad += kk.nan(i);
        ++h[(i & 3) * kRadixBins + radix_digit<U>(kk.key(i), 0)];
      }
      nans += bad;
    } else {
      for (int64_t i = s; i < e; ++i) {
        const U key = kk.key(i);
        if ((key & mask) == want) ++h[(i & 3) * kRadixBins + radix_digit<U>(key, pass)];
      }
    }
    for (int d = 0; d < kRadixBins; ++d)
      out[d] += int64_t(h[d]) + h[kRadixBins + d] + h[2 * kRadixBins + d] + h[3 * kRadixBins + d];
  }
}

// A key source over collected candidate keys (the later passes of a whole-tensor select).
template <typename U>
struct CollectedKeys {
  const U* k;
  U key(int64_t i) const { return k[i]; }
  bool nan(int64_t) const { return false; }
};

// Keys a serial select may copy out (see select_serial): few enough to pay for the copy (n / 8),
// and at most a few pages or n / 64, so a long row costs a small fraction of itself whatever
// its data (rows of a typical weight, up to 2^17 columns, stay under the fixed floor).
constexpr int64_t kSmallCopy = 1 << 14;

// Serial radix select of the k largest keys among [0, n), 1 <= k <= n. Passes from
// `first_pass` on, with `prefix` already fixed by earlier passes. After the first pass the keys
// sharing the chosen digit are copied out when they are few, so later passes skip the rest.
template <typename Keys, typename U = decltype(std::declval<Keys>().key(0))>
Selection<U> select_serial(const Keys& keys, int64_t n, int64_t k, int64_t& nans, int first_pass = 0,
                           U prefix = 0) {
  int64_t remaining = k;
  Histogram hist;
  for (int pass = first_pass; pass < radix_passes<U>(); ++pass) {
    hist.fill(0);
    count_digits(keys, 0, n, pass, prefix, hist, nans);
    if (nans) return {};
    take_digit<U>(hist, pass, prefix, remaining);
    const int64_t candidates = hist[radix_digit<U>(prefix, pass)];
    if (pass + 1 < radix_passes<U>() && candidates <= n / 8 && candidates > 0 &&
        (candidates <= kSmallCopy || candidates <= n / 64)) {
      std::vector<U> picked;
      picked.reserve(static_cast<size_t>(candidates));
      const U mask = radix_prefix_mask<U>(pass + 1);
      const Keys kk = keys;
      for (int64_t i = 0; i < n; ++i) {
        const U key = kk.key(i);
        if ((key & mask) == prefix) picked.push_back(key);
      }
      const Selection<U> rest = select_serial(CollectedKeys<U>{picked.data()}, candidates, remaining, nans,
                                              pass + 1, prefix);
      return {rest.threshold, k - rest.need_eq, rest.need_eq};
    }
  }
  return {prefix, k - remaining, remaining};
}

}  // namespace
}  // namespace darex::cpu::topk
