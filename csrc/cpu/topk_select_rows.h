// Radix select of one slice in one thread: every row of a per-row select, and the last passes
// of a whole-tensor select once its candidates are collected (topk_select_tensor.h). Keys come
// from a key source (common/topk_keys.h), computed from the data on the fly in every pass.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "../common/radix_key.h"
#include "isa.h"  // DAREX_ISA_CALL: the span loops come from topk_spans.inc, via topk_kernel.cpp

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

// Rows with this many elements or more, up to kRowSampleMax, are selected through a sample
// bracket (select_row_by_sample); the bound keeps the per-thread staging buffer, a row's keys,
// at most 512 KiB. Other rows take the radix select.
constexpr int64_t kRowSampleMin = 2048;
constexpr int64_t kRowSampleMax = int64_t(1) << 16;

// The need-th largest of a[0, m) (1 <= need <= m) by radix passes of 8 bits over the bits in
// which the remaining keys differ, compacting the keys of the chosen digit to the front each
// time (a is reordered). Returns the cut with the keys above it and the ties to take. For the
// few hundred to few thousand keys of a row's sample and bracket, where std::nth_element's
// unpredictable branches cost several times as much.
template <typename U>
Selection<U> select_small(U* a, int64_t m, int64_t need) {
  int64_t above = 0;
  for (;;) {
    U low = a[0], high = a[0];
    for (int64_t j = 1; j < m; ++j) {
      low = a[j] < low ? a[j] : low;
      high = a[j] > high ? a[j] : high;
    }
    if (low == high) return {low, above, need};
    int width = 0;  // bits below and including the highest one in which the keys differ
    for (U diff = static_cast<U>(low ^ high); diff != 0; diff = static_cast<U>(diff >> 1)) ++width;
    const int shift = width > 8 ? width - 8 : 0;
    uint32_t hist[256] = {};
    for (int64_t j = 0; j < m; ++j) ++hist[(a[j] >> shift) & 0xFF];
    int digit = 255;
    for (; hist[digit] < need; --digit) {
      need -= hist[digit];
      above += hist[digit];
    }
    int64_t kept = 0;
    for (int64_t j = 0; j < m; ++j) {
      const U key = a[j];
      a[kept] = key;
      kept += static_cast<int>((key >> shift) & 0xFF) == digit;
    }
    m = kept;
  }
}

// The ends of the bracket a strided sample gives the k-th largest of n keys: the sample keys
// at the expected rank, +- 4.5 standard deviations and a little (all keys above or below when
// that rank is out of the sample). `sample` holds `samples` keys and is reordered; `scratch`
// has room for as many. Shared by the whole-tensor and the per-row select.
template <typename U>
struct Bracket {
  U hi, lo;
  int64_t width;  // sample ranks between the ends
};
template <typename U>
Bracket<U> bracket_from_sample(U* sample, U* scratch, int64_t samples, int64_t k, int64_t n) {
  const double r = static_cast<double>(k) * static_cast<double>(samples) / static_cast<double>(n);
  const double margin = 4.5 * std::sqrt(r * (1.0 - r / static_cast<double>(samples)) + 1.0) + 8.0;
  const int64_t r_hi = static_cast<int64_t>(r - margin), r_lo = static_cast<int64_t>(r + margin);
  std::copy(sample, sample + samples, scratch);  // select_small reorders what it reads
  const U hi = r_hi < 0 ? static_cast<U>(~U(0)) : select_small(sample, samples, r_hi + 1).threshold;
  const U lo = r_lo >= samples ? U(0) : select_small(scratch, samples, r_lo + 1).threshold;
  return {hi, lo, std::min(r_lo, samples) - std::max<int64_t>(r_hi, 0)};
}

// Where the k-th largest key falls after one pass over a bracket [lo, hi]: among the keys equal
// to hi, the `gathered` ones strictly between (select_inside(need) selects among those), or the
// keys equal to lo. False when the bracket missed it.
template <typename U, typename SelectInside>
bool resolve_bracket(const Bracket<U>& b, int64_t k, int64_t above, int64_t at_hi, int64_t gathered, int64_t at_lo,
                     const SelectInside& select_inside, Selection<U>& result) {
  if (b.lo == b.hi) at_lo = 0;  // one group, counted as the ties at hi
  int64_t need = k - above;
  if (need < 1) return false;
  if (need <= at_hi) {
    result = {b.hi, above, need};
    return true;
  }
  need -= at_hi;
  if (need <= gathered) {
    const Selection<U> inner = select_inside(need);
    result = {inner.threshold, k - inner.need_eq, inner.need_eq};
    return true;
  }
  need -= gathered;
  if (need > at_lo) return false;
  result = {b.lo, k - need, need};
  return true;
}

// Sample-guided select of one row in one thread, as select_by_sample does for a whole tensor: a
// strided sample of a sixteenth of the keys brackets the k-th key; one vectorized pass over the
// row (topk_spans.inc) counts the keys above hi, equal to hi and equal to lo, and compacts those
// strictly between into `stage` (room for n + kCompactSlack keys); select_small picks the cut
// among those few. Counts the row's NaN into `nans` (the result is then meaningless). Returns
// false when the bracket misses; the caller then runs the radix select, whose histogram pass
// per digit (clearing and merging 2048 bins) costs more than the keys of a row this short.
template <typename Keys, typename U = decltype(std::declval<Keys>().key(0))>
bool select_row_by_sample(const Keys& keys, int64_t n, int64_t k, U* stage, Selection<U>& result,
                          int64_t& nans) {
  constexpr int64_t kStride = 16;
  const int64_t samples = n / kStride;
  for (int64_t j = 0; j < samples; ++j) stage[j] = keys.key(j * kStride + kStride / 2);
  const Bracket<U> b = bracket_from_sample(stage, stage + samples, samples, k, n);  // 2 * samples <= n
  int64_t counts[4] = {0, 0, 0, 0};  // above hi, == hi, == lo, NaN
  int64_t gathered = 0;
  // Pieces of at most 2^14 keys: bracket_span's lane counters are as narrow as the keys.
  for (int64_t s = 0; s < n; s += int64_t(1) << 14) {
    int64_t staged = 0;
    DAREX_ISA_CALL_RESULT(staged, bracket_span, keys, s, std::min(n, s + (int64_t(1) << 14)), b.hi, b.lo,
                          stage + gathered, counts);
    gathered += staged;
  }
  nans += counts[3];
  if (counts[3] != 0) return true;
  return resolve_bracket(b, k, counts[0], counts[1], gathered, counts[2],
                         [&](int64_t need) { return select_small(stage, gathered, need); }, result);
}

}  // namespace
}  // namespace darex::cpu::topk
