// Mask spec v2 ("skip") on the CPU: the host table, and the element range split into pieces that
// never cross a stripe boundary, so each piece's rare elements come from one walk of one stripe
// (common/skip_mask.h). Every op's v2 path is built from these two.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "../common/skip_mask.h"
#include "philox_fill.h"

namespace darex::cpu {

// The table and which outcome is rare, for one call of an op.
struct SkipPlan {
  std::vector<uint32_t> table;
  std::vector<uint16_t> index;  // skip_index_build's: the gap in about one compare
  bool rare_is_keep;
  bool any_rare;  // false when rho rounds to no rare element at all (C[4095] = 0)
  int32_t draw_batch;  // draws made per Philox call: a stripe's usual need, at most 128
  double rho;          // probability of the rare outcome, min(p, 1 - p)

  explicit SkipPlan(double p) : table(kSkipStripe), index(kSkipIndexSize), rare_is_keep(skip_rare_is_keep(p)) {
    skip_table_build(p, table.data());
    skip_index_build(table.data(), index.data());
    any_rare = table[kSkipStripe - 1] != 0u;
    // mean + 4 standard deviations of a stripe's draws (rare count + 1), rounded up to 16
    rho = p < 1.0 - p ? p : 1.0 - p;
    const double mean = rho * kSkipStripe + 1.0;
    const double want = mean + 4.0 * std::sqrt(mean) + 4.0;
    draw_batch = want >= 128.0 ? 128 : (static_cast<int32_t>(want) + 15) / 16 * 16;
  }

  // Indices (relative to `first`) of the rare elements of [first, first + n), a range inside one
  // stripe, in increasing order; returns how many. `out` holds at least n entries.
  //
  // The walk of SkipWalker, reordered: a gap searched in the whole table (limit 4096) exceeds
  // what is left of the stripe exactly when the limited search would end the walk, so each
  // batch's gaps depend only on their words (computed first, with no chain through pos), then a
  // running sum places them. Draws come kDrawBatch at a time from the vectorized Philox.
  int32_t rare_in(uint64_t seed, uint64_t first, int32_t n, int32_t* out) const {
    if (!any_rare) return 0;
    constexpr int32_t kDrawBatch = 128;
    constexpr int32_t kGapChunk = 8;
    const int32_t batch = draw_batch;
    const uint64_t stripe = first >> kSkipStripeLog2;
    const int32_t start = static_cast<int32_t>(first & (kSkipStripe - 1));
    const int32_t stop = start + n;
    alignas(64) uint32_t words[kDrawBatch];
    int32_t gaps[kGapChunk];
    int32_t count = 0, pos = 0;
    for (uint64_t next_draw = 0;; next_draw += static_cast<uint64_t>(batch)) {
      philox_fill_stripe(seed, stripe, next_draw, batch, words);
      // Gaps are searched kGapChunk at a time, so the draws a stripe does not reach (the batch
      // is sized for its mean need plus 4 standard deviations) are mostly never searched.
      for (int32_t c = 0; c < batch; c += kGapChunk) {
        const int32_t m = batch - c < kGapChunk ? batch - c : kGapChunk;
        for (int32_t k = 0; k < m; ++k)
          gaps[k] = skip_gap_indexed(table.data(), index.data(), kSkipStripe, words[c + k]);
        for (int32_t k = 0; k < m; ++k) {
          const int32_t r = pos + gaps[k];
          if (r >= stop) return count;  // past the piece, or the stripe has no further rare element
          if (r >= start) out[count++] = r - start;
          pos = r + 1;
        }
      }
    }
  }

  // words[k] = 1 if element first + k is kept, else 0 (the v1 spans' keep test with threshold
  // 1), for a range inside one stripe.
  void keep_words(uint64_t seed, uint64_t first, int32_t n, uint32_t* words, int32_t* scratch) const {
    const int32_t count = rare_in(seed, first, n, scratch);
    std::fill(words, words + n, rare_is_keep ? 0u : 1u);
    for (int32_t k = 0; k < count; ++k) words[scratch[k]] = rare_is_keep ? 1u : 0u;
  }
};

constexpr uint32_t kSkipWordThreshold = 1;  // keep iff word >= 1, for SkipPlan::keep_words

// Calls f(start, count) for [begin, end) cut at the stripe boundaries of the flat indices
// offset + [begin, end), so count <= 4096 and a piece is inside one stripe.
template <typename F>
void for_each_piece_in(uint64_t offset, int64_t begin, int64_t end, const F& f) {
  for (int64_t s = begin; s < end;) {
    const uint64_t flat = offset + static_cast<uint64_t>(s);
    const int64_t to_boundary = static_cast<int64_t>(kSkipStripe - (flat & (kSkipStripe - 1)));
    const int64_t count = std::min(to_boundary, end - s);
    f(s, static_cast<int32_t>(count));
    s += count;
  }
}

// for_each_piece_in over [0, n), in parallel.
template <typename F>
void for_each_stripe_piece(uint64_t offset, int64_t n, int64_t grain, const F& f) {
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { for_each_piece_in(offset, begin, end, f); });
}

// The rare elements of each stripe piece of [begin, end), one piece ahead: a piece is walked,
// then ahead(s, rare, k) runs on it (to prefetch its scattered lines), then f(s, count, rare, k)
// runs on the piece before it, whose lines have had a walk's time to arrive. Memory latency,
// not bandwidth, bounds a 1% scatter unless many lines are in flight.
template <typename Ahead, typename F>
void for_each_rare_piece_ahead(const SkipPlan& plan, uint64_t seed, uint64_t offset, int64_t begin, int64_t end,
                               const Ahead& ahead, const F& f) {
  std::vector<int32_t> buf_a(static_cast<size_t>(kSkipStripe)), buf_b(static_cast<size_t>(kSkipStripe));
  int32_t* cur = buf_a.data();
  int32_t* next = buf_b.data();
  int64_t cur_s = -1;
  int32_t cur_count = 0, cur_k = 0;
  for_each_piece_in(offset, begin, end, [&](int64_t s, int32_t count) {
    const int32_t k = plan.rare_in(seed, offset + static_cast<uint64_t>(s), count, next);
    ahead(s, static_cast<const int32_t*>(next), k);
    if (cur_s >= 0) f(cur_s, cur_count, static_cast<const int32_t*>(cur), cur_k);
    std::swap(cur, next);
    cur_s = s;
    cur_count = count;
    cur_k = k;
  });
  if (cur_s >= 0) f(cur_s, cur_count, static_cast<const int32_t*>(cur), cur_k);
}

// The rare elements of the flat indices offset + [0, n), walked once and kept: per stripe piece
// its count (prefix-summed in `starts`) and its piece-relative positions as uint16 (a piece
// holds at most 4096 elements), so ops that must check the count before writing (the seeded
// scatter) or need every piece's place in a compact array (pack, scatter) walk once, not
// twice. O(rare) memory. Pieces are split into tasks by index, so the positions never depend on
// the thread count.
struct RareList {
  uint64_t offset;
  int64_t n;
  int64_t pieces;
  std::vector<int64_t> task_first;           // piece range of task t: [task_first[t], task_first[t + 1])
  std::vector<int64_t> starts;               // starts[b]: rare elements before piece b; starts[pieces] = total
  std::vector<std::vector<uint16_t>> where;  // per task: its pieces' positions, piece after piece

  RareList(const SkipPlan& plan, uint64_t seed, uint64_t offset_, int64_t n_) : offset(offset_), n(n_) {
    pieces = n == 0 ? 0 : static_cast<int64_t>(((offset + static_cast<uint64_t>(n) - 1) >> kSkipStripeLog2) -
                                                (offset >> kSkipStripeLog2)) + 1;
    const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(pieces, 8 * at::get_num_threads()));
    task_first.resize(static_cast<size_t>(tasks) + 1);
    for (int64_t t = 0; t <= tasks; ++t) task_first[static_cast<size_t>(t)] = pieces * t / tasks;
    starts.assign(static_cast<size_t>(pieces) + 1, 0);
    where.resize(static_cast<size_t>(tasks));
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<int32_t> rare(static_cast<size_t>(kSkipStripe));
      for (int64_t t = t0; t < t1; ++t) {
        auto& w = where[static_cast<size_t>(t)];
        for (int64_t b = task_first[static_cast<size_t>(t)]; b < task_first[static_cast<size_t>(t) + 1]; ++b) {
          int64_t begin, end;
          piece(b, begin, end);
          const int32_t k = plan.rare_in(seed, offset + static_cast<uint64_t>(begin), static_cast<int32_t>(end - begin),
                                         rare.data());
          starts[static_cast<size_t>(b) + 1] = k;
          for (int32_t j = 0; j < k; ++j) w.push_back(static_cast<uint16_t>(rare[static_cast<size_t>(j)]));
        }
      }
    });
    for (int64_t b = 0; b < pieces; ++b) starts[static_cast<size_t>(b) + 1] += starts[static_cast<size_t>(b)];
  }

  int64_t total() const { return starts.back(); }
  int64_t tasks() const { return static_cast<int64_t>(where.size()); }

  // Element range [begin, end) (tensor-local) of piece b.
  void piece(int64_t b, int64_t& begin, int64_t& end) const {
    const uint64_t stripe_start = ((offset >> kSkipStripeLog2) + static_cast<uint64_t>(b)) << kSkipStripeLog2;
    begin = stripe_start > offset ? static_cast<int64_t>(stripe_start - offset) : 0;
    end = std::min<int64_t>(n, static_cast<int64_t>(stripe_start + kSkipStripe - offset));
  }

  // f(state, begin, count, pos, k, first) for every piece, in parallel by task: pos[0..k) the
  // piece's rare positions (relative to begin), first = starts[b]. State is built once per task.
  // ahead(begin, pos, k) runs on the next piece of the task first (to prefetch its lines).
  template <typename State, typename Ahead, typename F>
  void for_each(const Ahead& ahead, const F& f) const {
    at::parallel_for(0, tasks(), 1, [&](int64_t t0, int64_t t1) {
      State state;
      for (int64_t t = t0; t < t1; ++t) {
        const uint16_t* pos = where[static_cast<size_t>(t)].data();
        const int64_t b_end = task_first[static_cast<size_t>(t) + 1];
        for (int64_t b = task_first[static_cast<size_t>(t)]; b < b_end; ++b) {
          int64_t begin, end;
          piece(b, begin, end);
          const int64_t first = starts[static_cast<size_t>(b)];
          const int32_t k = static_cast<int32_t>(starts[static_cast<size_t>(b) + 1] - first);
          if (b + 1 < b_end) {  // the next piece's lines are requested while this one is done
            int64_t next_begin, next_end;
            piece(b + 1, next_begin, next_end);
            ahead(next_begin, pos + k, static_cast<int32_t>(starts[static_cast<size_t>(b) + 2] - starts[static_cast<size_t>(b) + 1]));
          }
          f(state, begin, static_cast<int32_t>(end - begin), pos, k, first);
          pos += k;
        }
      }
    });
  }
};

}  // namespace darex::cpu
