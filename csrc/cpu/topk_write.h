// The write pass of the top-k ops: write(i, selected) exactly once for every element, ties at
// the threshold taken lowest index first; and select_and_write, which runs a select and its
// write for the whole tensor or for every row.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "isa.h"  // DAREX_ISA_CALL: the span loops come from topk_spans.inc, via topk_kernel.cpp
#include "topk_select_rows.h"
#include "topk_select_tensor.h"

namespace darex::cpu::topk {
// Internal linkage: these phases are included by topk_kernel.cpp alone, and GCC inlines and
// specializes them there as it did when they were one file (named linkage cost the per-row
// select 5-10%).
namespace {

// Writes the selection over a whole tensor: write(i, selected) for every i, over fixed chunks.
// A chunk without elements tied at the threshold is written at once (its second scan hits
// cache); a chunk with ties is left untouched and written by a second pass that knows how many
// ties precede it, so the lowest indices win. Deferring whole chunks matters for in-place
// writers: a written element's new value must never be re-read as a key. The ties taken are a
// prefix in index order, so every deferred chunk but the one holding the last tie taken is
// written by a plain vectorizable compare (key >= threshold before it, key > threshold after
// it); low-precision scores tie in every chunk, so this second pass is often the whole tensor.
template <typename Keys, typename Write, typename U>
void write_parallel(const Keys& keys, int64_t n, const Selection<U>& sel, const Write& write) {
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const U threshold = sel.threshold;
  const int64_t need_eq = sel.need_eq;
  std::vector<int64_t> ties(static_cast<size_t>(chunks));
  at::parallel_for(0, chunks, 4, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = c * kChunk, end = std::min(n, begin + kChunk);
      int64_t count = 0;
      DAREX_ISA_CALL_RESULT(count, count_ties_span, keys, begin, end, threshold);
      ties[static_cast<size_t>(c)] = count;
      if (count == 0) DAREX_ISA_CALL(write_cut_span, keys, begin, end, threshold, false, write);
    }
  });
  std::vector<int64_t> before(static_cast<size_t>(chunks));
  int64_t running = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    before[static_cast<size_t>(c)] = running;
    running += ties[static_cast<size_t>(c)];
  }
  at::parallel_for(0, chunks, 4, [&](int64_t c0, int64_t c1) {
    const Keys kk = keys;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t count = ties[static_cast<size_t>(c)];
      if (count == 0) continue;
      const int64_t begin = c * kChunk, end = std::min(n, begin + kChunk);
      int64_t rank = before[static_cast<size_t>(c)];
      if (rank + count <= need_eq || rank >= need_eq) {
        DAREX_ISA_CALL(write_cut_span, keys, begin, end, threshold, rank < need_eq, write);
      } else {
        for (int64_t i = begin; i < end; ++i) {
          const U key = kk.key(i);
          write(i, key > threshold || (key == threshold && rank++ < need_eq));
        }
      }
    }
  });
}

// One slice in one thread. The ties taken are the first need_eq in index order: a vectorized
// count finds the block where they end, then two plain compares write the slice (>= threshold
// before that point, > after it). Every key is read before any write, and each element is
// written once, so in-place writers are safe.
template <typename Keys, typename Write, typename U>
void write_serial(const Keys& keys, int64_t n, const Selection<U>& sel, const Write& write) {
  const U threshold = sel.threshold;
  int64_t taken_end = 0;  // one past the last tie taken
  if (sel.need_eq > 0) {
    constexpr int64_t kStep = 256;
    int64_t seen = 0, i = 0;
    for (; i < n; i += kStep) {
      int64_t c = 0;
      DAREX_ISA_CALL_RESULT(c, count_ties_span, keys, i, std::min(n, i + kStep), threshold);
      if (seen + c >= sel.need_eq) break;
      seen += c;
    }
    for (; i < n; ++i) {
      if (keys.key(i) == threshold && ++seen == sel.need_eq) {
        taken_end = i + 1;
        break;
      }
    }
    TORCH_INTERNAL_ASSERT(taken_end > 0, "top-k write: fewer ties than selected");
  }
  DAREX_ISA_CALL(write_cut_span, keys, 0, taken_end, threshold, true, write);
  DAREX_ISA_CALL(write_cut_span, keys, taken_end, n, threshold, false, write);
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
  using U = decltype(make_keys(0).key(0));
  const bool by_sample = cols >= kRowSampleMin && cols <= kRowSampleMax && k > 0 && k < cols;
  // Rows are independent; grain ~64K elements of work per task.
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / cols);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    std::unique_ptr<U[]> stage(by_sample ? new U[static_cast<size_t>(cols + kCompactSlack)] : nullptr);
    for (int64_t r = r0; r < r1; ++r) {
      const auto keys = make_keys(r);
      int64_t nans = 0;
      if (Selection<U> sel; by_sample && select_row_by_sample(keys, cols, k, stage.get(), sel, nans)) {
        row_nans[static_cast<size_t>(r)] = nans;
        if (nans == 0) write_serial(keys, cols, sel, make_write(r));
        continue;
      }
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

}  // namespace
}  // namespace darex::cpu::topk
