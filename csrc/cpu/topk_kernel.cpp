// CPU kernels of the exact top-k ops: radix select on order-preserving keys (common/radix_key.h),
// 11-bit digits, one histogram pass per digit, then one write pass. No sort, no index tensor,
// no score tensor: keys are computed from the data on the fly in every pass.
//
// Whole tensor: histogram passes run in parallel with per-thread histograms; the write pass
// runs over fixed chunks, leaving elements whose key equals the threshold for a second, ordered
// pass over only the chunks that hold such elements (so the lower index wins ties).
// Per row: rows run in parallel, each row serially (ties ordered for free).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <functional>
#include <memory>
#include <type_traits>
#include <cstring>
#include <vector>

#include "../common/dare_math.h"
#include "../common/radix_key.h"
#include "../ops/prune_args.h"
#include "../ops/topk_args.h"

namespace darex::cpu {
namespace {

// Storage bits of each dtype and its exponent mask (for the NaN test).
template <typename scalar_t> struct Bits;
template <> struct Bits<float> { using U = uint32_t; static constexpr U kExp = 0x7F800000u; };
template <> struct Bits<double> { using U = uint64_t; static constexpr U kExp = 0x7FF0000000000000ull; };
template <> struct Bits<c10::Half> { using U = uint16_t; static constexpr U kExp = 0x7C00u; };
template <> struct Bits<c10::BFloat16> { using U = uint16_t; static constexpr U kExp = 0x7F80u; };

template <typename scalar_t>
using acc_of = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename To, typename From>
inline To bit_cast_to(From v) {
  static_assert(sizeof(To) == sizeof(From));
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}

// ---- key sources: key(i) and nan(i) for element i of a slice ------------------------------

template <typename scalar_t, bool kLargest>
struct ScoreKeys {  // the scores themselves
  using U = typename Bits<scalar_t>::U;
  const U* bits;
  U key(int64_t i) const { return radix_key<U>(bits[i], kLargest); }
  bool nan(int64_t i) const { return is_nan_bits<U>(bits[i], Bits<scalar_t>::kExp); }
};

template <typename scalar_t>
struct AbsKeys {  // |x|: clear the sign bit
  using U = typename Bits<scalar_t>::U;
  const U* bits;
  U key(int64_t i) const { return radix_key<U>(static_cast<U>(bits[i] & ~RadixTraits<U>::kSign), true); }
  bool nan(int64_t i) const { return is_nan_bits<U>(bits[i], Bits<scalar_t>::kExp); }
};

template <typename scalar_t>
struct WandaKeys {  // |x_j| * a_j in the accumulation type, for one row
  using acc_t = acc_of<scalar_t>;
  using U = typename Bits<acc_t>::U;
  const scalar_t* row;
  const acc_t* act;
  acc_t score(int64_t j) const { return acc_mul(std::abs(static_cast<acc_t>(row[j])), act[j]); }
  U key(int64_t j) const { return radix_key<U>(bit_cast_to<U>(score(j)), true); }
  bool nan(int64_t j) const { return std::isnan(score(j)); }
};

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
      const int shift = RadixTraits<U>::kBits - kRadixBits * (pass + 1);
      prefix |= shift >= 0 ? static_cast<U>(static_cast<U>(d) << shift)
                           : static_cast<U>(static_cast<U>(d) >> (-shift));
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
    if (pass + 1 < radix_passes<U>() && candidates <= n / 8 && candidates > 0) {
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

// Writes the selection over a whole tensor: write(i, selected) for every i, over fixed chunks.
// A chunk without elements tied at the threshold is written at once (its second scan hits
// cache); a chunk with ties is left untouched and written by an ordered second pass that knows
// how many ties precede it, so the lowest indices win. Deferring whole chunks matters for
// in-place writers: a written element's new value must never be re-read as a key.
template <typename Keys, typename Write, typename U>
void write_parallel(const Keys& keys, int64_t n, const Selection<U>& sel, const Write& write) {
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<int64_t> ties(static_cast<size_t>(chunks));
  at::parallel_for(0, chunks, 4, [&](int64_t c0, int64_t c1) {
    const Keys kk = keys;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = c * kChunk, end = std::min(n, begin + kChunk);
      int64_t count = 0;
      for (int64_t i = begin; i < end; ++i) count += kk.key(i) == sel.threshold;
      ties[static_cast<size_t>(c)] = count;
      if (count == 0) {
        for (int64_t i = begin; i < end; ++i) write(i, kk.key(i) > sel.threshold);
      }
    }
  });
  std::vector<int64_t> before(static_cast<size_t>(chunks));
  int64_t running = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    before[static_cast<size_t>(c)] = running;
    running += ties[static_cast<size_t>(c)];
  }
  at::parallel_for(0, chunks, 4, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      if (ties[static_cast<size_t>(c)] == 0) continue;
      const Keys kk = keys;
      int64_t rank = before[static_cast<size_t>(c)];
      for (int64_t i = c * kChunk, end = std::min(n, (c + 1) * kChunk); i < end; ++i) {
        const U key = kk.key(i);
        write(i, key > sel.threshold || (key == sel.threshold && rank++ < sel.need_eq));
      }
    }
  });
}

// One slice, serially, in index order: ties resolved as they come.
template <typename Keys, typename Write, typename U>
void write_serial(const Keys& keys, int64_t n, const Selection<U>& sel, const Write& write) {
  int64_t taken = 0;
  for (int64_t i = 0; i < n; ++i) {
    const U key = keys.key(i);
    const bool eq = key == sel.threshold;
    write(i, key > sel.threshold || (eq && taken++ < sel.need_eq));
  }
}

// Selects k per slice and writes it. make_keys(row) gives the key source of a row (row 0 for the
// whole tensor), make_write(row) its writer; k = 0 and k = n still check for NaN.
template <typename MakeKeys, typename MakeWrite>
void select_and_write(int64_t rows, int64_t cols, int64_t k, bool per_row, const MakeKeys& make_keys,
                      const MakeWrite& make_write) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  if (!per_row) {
    const auto keys = make_keys(0);
    using U = decltype(keys.key(0));
    const auto write = make_write(0);
    if (k == 0 || k == n) {  // no selection needed, but NaN is still an error
      int64_t nans = 0;
      for (int64_t i = 0; i < n; ++i) nans += keys.nan(i);
      raise_on_nan<U>(nans);
      at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) write(i, k == n);
      });
      return;
    }
    write_parallel(keys, n, select_parallel(keys, n, k), write);
    return;
  }
  if (cols == 0) return;
  std::vector<int64_t> row_nans(static_cast<size_t>(rows));
  // Rows are independent; grain ~64K elements of work per task.
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / cols);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const auto keys = make_keys(r);
      int64_t nans = 0;
      if (k == 0 || k == cols) {
        for (int64_t j = 0; j < cols; ++j) nans += keys.nan(j);
        row_nans[static_cast<size_t>(r)] = nans;
        if (nans) continue;
        const auto write = make_write(r);
        for (int64_t j = 0; j < cols; ++j) write(j, k == cols);
        continue;
      }
      const auto sel = select_serial(keys, cols, k, nans);
      row_nans[static_cast<size_t>(r)] = nans;
      if (nans == 0) write_serial(keys, cols, sel, make_write(r));
    }
  });
  int64_t nans = 0;
  for (int64_t v : row_nans) nans += v;
  // Rows without NaN were written already; refusing afterwards would leave a half-pruned
  // tensor, so in-place ops scan for NaN before calling this (see check_no_nan).
  raise_on_nan<uint32_t>(nans);
}

template <typename scalar_t>
void check_no_nan(const at::Tensor& x) {
  using U = typename Bits<scalar_t>::U;
  const U* bits = reinterpret_cast<const U*>(x.data_ptr<scalar_t>());
  const int64_t n = x.numel();
  std::atomic<int64_t> nans{0};
  at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) {
    int64_t local = 0;
    for (int64_t i = b; i < e; ++i) local += is_nan_bits<U>(bits[i], Bits<scalar_t>::kExp);
    nans += local;
  });
  raise_on_nan<U>(nans.load());
}

void check_scores(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  check_values_tensor(t, name);
}

at::Tensor topk_mask_cpu(const at::Tensor& scores, int64_t k, bool largest, bool per_row) {
  check_scores(scores, "scores");
  const auto [rows, cols] = slice_shape(scores, per_row);
  check_k(k, cols, "k");
  const at::Tensor x = scores.contiguous();
  at::Tensor mask = at::empty(scores.sizes(), scores.options().dtype(at::kBool));
  bool* m = mask.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_topk_mask_cpu", [&] {
    using U = typename Bits<scalar_t>::U;
    const U* bits = reinterpret_cast<const U*>(x.data_ptr<scalar_t>());
    const auto run = [&](auto largest_tag) {
      constexpr bool kLargest = decltype(largest_tag)::value;
      select_and_write(
          rows, cols, k, per_row, [&](int64_t r) { return ScoreKeys<scalar_t, kLargest>{bits + r * cols}; },
          [&](int64_t r) { bool* out = m + r * cols; return [out](int64_t i, bool s) { out[i] = s; }; });
    };
    if (largest) run(std::true_type{}); else run(std::false_type{});
  });
  return mask;
}

at::Tensor topk_threshold_cpu(const at::Tensor& scores, int64_t k, bool largest) {
  check_scores(scores, "scores");
  TORCH_CHECK_VALUE(k >= 1 && k <= scores.numel(), "k must be in [1, ", scores.numel(), "], got ", k);
  const at::Tensor x = scores.contiguous();
  at::Tensor result = at::empty({3}, scores.options().dtype(at::kDouble));
  double* r = result.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_topk_threshold_cpu", [&] {
    using U = typename Bits<scalar_t>::U;
    const U* raw = reinterpret_cast<const U*>(x.data_ptr<scalar_t>());
    const Selection<U> sel = largest ? select_parallel(ScoreKeys<scalar_t, true>{raw}, x.numel(), k)
                                     : select_parallel(ScoreKeys<scalar_t, false>{raw}, x.numel(), k);
    // Invert radix_key: the bits of the threshold score.
    U key = largest ? sel.threshold : static_cast<U>(~sel.threshold);
    const U bits = (key & RadixTraits<U>::kSign) ? static_cast<U>(key & ~RadixTraits<U>::kSign)
                                                 : static_cast<U>(~key);
    r[0] = static_cast<double>(bit_cast_to<scalar_t>(bits));
    r[1] = static_cast<double>(sel.beyond);
    r[2] = static_cast<double>(sel.need_eq);
  });
  return result;
}

// Kept entries scaled by 1/q (when q is given), dropped ones set to 0; branch-free selects.
template <typename scalar_t, bool kScale>
struct PruneWriter {
  using acc_t = acc_of<scalar_t>;
  scalar_t* x;
  acc_t inv;
  void operator()(int64_t i, bool keep) const {
    const acc_t v = static_cast<acc_t>(x[i]);
    const acc_t kept = kScale ? prune_value(v, inv, true) : v;
    x[i] = static_cast<scalar_t>(keep ? kept : acc_t(0));
  }
};

// Runs f(make_writer) with a writer factory for row r, specialized on whether q is given.
template <typename scalar_t, typename F>
void with_prune_writer(scalar_t* x, int64_t cols, std::optional<acc_of<scalar_t>> inv, const F& f) {
  if (inv) {
    f([x, cols, v = *inv](int64_t r) { return PruneWriter<scalar_t, true>{x + r * cols, v}; });
  } else {
    f([x, cols](int64_t r) { return PruneWriter<scalar_t, false>{x + r * cols, 0}; });
  }
}

void magnitude_prune_cpu(at::Tensor& delta, int64_t keep, bool per_row, std::optional<double> q) {
  check_scores(delta, "delta");
  const auto [rows, cols] = slice_shape(delta, per_row);
  check_k(keep, cols, "keep");
  at::Tensor work = delta.is_contiguous() ? delta : delta.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_magnitude_prune_cpu", [&] {
    using U = typename Bits<scalar_t>::U;
    const auto inv = inverse_of<acc_of<scalar_t>>(q);
    check_no_nan<scalar_t>(work);
    scalar_t* x = work.data_ptr<scalar_t>();
    const U* bits = reinterpret_cast<const U*>(x);
    with_prune_writer<scalar_t>(x, cols, inv, [&](const auto& make_writer) {
      select_and_write(rows, cols, keep, per_row, [&](int64_t r) { return AbsKeys<scalar_t>{bits + r * cols}; },
                       make_writer);
    });
  });
  if (!work.is_same(delta)) delta.copy_(work);
}

void wanda_prune_cpu(at::Tensor& delta, const at::Tensor& act_norm, int64_t keep, std::optional<double> q) {
  check_scores(delta, "delta");
  check_wanda_args(delta, act_norm, keep);
  const int64_t rows = delta.size(0), cols = delta.size(1);
  at::Tensor work = delta.is_contiguous() ? delta : delta.contiguous();
  const at::Tensor a = act_norm.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_wanda_prune_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const auto inv = inverse_of<acc_t>(q);
    scalar_t* x = work.data_ptr<scalar_t>();
    const acc_t* an = a.data_ptr<acc_t>();
    // Scores are NaN iff an input is NaN or |x| * a is inf * 0: scan before writing anything.
    std::atomic<int64_t> nans{0};
    at::parallel_for(0, rows, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
      int64_t local = 0;
      for (int64_t r = r0; r < r1; ++r) {
        const WandaKeys<scalar_t> keys{x + r * cols, an};
        for (int64_t j = 0; j < cols; ++j) local += keys.nan(j);
      }
      nans += local;
    });
    raise_on_nan<uint32_t>(nans.load());
    with_prune_writer<scalar_t>(x, cols, inv, [&](const auto& make_writer) {
      select_and_write(rows, cols, keep, true, [&](int64_t r) { return WandaKeys<scalar_t>{x + r * cols, an}; },
                       make_writer);
    });
  });
  if (!work.is_same(delta)) delta.copy_(work);
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CPU, m) {
  m.impl("topk_mask", &topk_mask_cpu);
  m.impl("topk_threshold", &topk_threshold_cpu);
  m.impl("magnitude_prune_", &magnitude_prune_cpu);
  m.impl("wanda_prune_", &wanda_prune_cpu);
}

}  // namespace darex::cpu
