// Per-row select: one CUDA block per row does all digit passes and the ordered write in shared
// memory; rows of at most kShortRowCols run one warp per row by direct ranking (a block's
// digit passes, barriers and scans cost far more than 128 elements); a few very long rows run
// the whole-tensor path row by row instead, so the GPU stays busy. The NaN count runs first, so
// nothing is written when a score is NaN.
#pragma once

#include <c10/cuda/CUDAException.h>

#include <cub/block/block_scan.cuh>

#include <cstdint>
#include <type_traits>

#include "../common/radix_key.h"
#include "topk_common.cuh"
#include "topk_select_tensor.cuh"
#include "topk_write.cuh"

namespace darex::cuda::topk {

// One block per row (grid-stride over rows), 0 < k < cols <= kRowKernelMaxCols: all digit
// passes in a shared-memory histogram, then the write. Every element is read by the hist
// passes before any is written (barrier after the last histogram), and in the write each
// element is read and written by the same thread, so in-place writers are safe.
template <typename Keys, typename Writer>
__global__ void __launch_bounds__(kThreads) row_topk_kernel(Keys keys, Writer w, int64_t rows,
                                                             int64_t cols, uint32_t k) {
  using U = typename Keys::U;
  using Scan = cub::BlockScan<uint32_t, kThreads>;
  __shared__ uint32_t bins[kRadixBins];
  __shared__ typename Scan::TempStorage scan;
  __shared__ U s_prefix;
  __shared__ uint32_t s_remaining, s_bin;
  const int passes = radix_passes<U>();
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const Keys rk = keys.row(r, cols);
    const Writer rw = w.row(r, cols);
    U prefix = 0;
    uint32_t remaining = k;  // to take among keys matching `prefix`; 1 <= remaining <= matches
    uint32_t need_eq = 0;
    bool ordered = false;
    for (int pass = 0; pass < passes; ++pass) {
      for (int b = threadIdx.x; b < kRadixBins; b += kThreads) bins[b] = 0;
      __syncthreads();
      const U mask = radix_prefix_mask<U>(pass);
      for (int64_t base = 0; base < cols; base += kTile) {  // uniform: all lanes reach hist_add
        U key[kUnroll];
        bool ok[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t j = base + static_cast<int64_t>(u * kThreads + threadIdx.x);
          ok[u] = j < cols;
          key[u] = ok[u] ? rk.key(j) : U(0);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
          hist_add(bins, ok[u] && (key[u] & mask) == prefix, radix_digit<U>(key[u], pass));
      }
      __syncthreads();
      // Thread t owns bins [top - kBinsPerThread, top), thread 0 the highest; an exclusive
      // scan in thread order counts the matches in higher bins. Exactly one thread holds the
      // bin where the count from the top reaches `remaining`.
      const int top = kRadixBins - static_cast<int>(threadIdx.x) * kBinsPerThread;
      uint32_t sum = 0;
#pragma unroll
      for (int b = 1; b <= kBinsPerThread; ++b) sum += bins[top - b];
      uint32_t above = 0;
      Scan(scan).ExclusiveSum(sum, above);
      if (above < remaining && remaining <= above + sum) {
        uint32_t acc = above;
        for (int d = top - 1; d >= top - kBinsPerThread; --d) {
          const uint32_t c = bins[d];
          if (acc + c >= remaining) {
            s_prefix = static_cast<U>(prefix | radix_digit_bits<U>(static_cast<uint32_t>(d), pass));
            s_remaining = remaining - acc;
            s_bin = c;
            break;
          }
          acc += c;
        }
      }
      __syncthreads();
      // Read by all before the next write of s_*, which comes after two more barriers.
      prefix = s_prefix;
      remaining = s_remaining;
      const uint32_t bin = s_bin;
      if (bin == remaining) break;  // the whole bin is taken: select key >= prefix, no ties
      if (pass + 1 == passes) {
        ordered = true;  // prefix is the full threshold key; take `remaining` of its ties
        need_eq = remaining;
      }
    }
    if (!ordered) {
      for (int64_t j = threadIdx.x; j < cols; j += kThreads) rw.write(j, rk.key(j) >= prefix);
      continue;
    }
    const U thr = prefix;
    uint32_t rank = 0;  // ties before the current tile; uniform over the block, <= cols
    for (int64_t base = 0; base < cols; base += kThreads) {
      const int64_t j = base + threadIdx.x;
      const bool valid = j < cols;
      const U key = valid ? rk.key(j) : U(0);
      if (rank >= need_eq) {
        if (valid) rw.write(j, key > thr);
        continue;
      }
      const uint32_t eq = (valid && key == thr) ? 1u : 0u;
      uint32_t pos = 0, tile_eq = 0;
      Scan(scan).ExclusiveSum(eq, pos, tile_eq);
      if (valid) rw.write(j, key > thr || (eq != 0 && rank + pos < need_eq));
      rank += tile_eq;
      __syncthreads();  // scan storage reused by the next tile
    }
  }
}

constexpr int kShortKeysPerLane = 4;
constexpr int64_t kShortRowCols = 32 * kShortKeysPerLane;  // rows this short: a warp per row

// Warp shuffles move 32- or 64-bit words; radix keys are 16, 32 or 64 bits wide.
template <typename U>
using ShuffleWord = std::conditional_t<(sizeof(U) > 4), unsigned long long, uint32_t>;

// One warp per row (grid-stride over rows), 0 < k < cols <= kShortRowCols. Lane l holds keys
// l, l + 32, ...; element j is selected iff fewer than k elements beat it, where i beats j when
// key_i > key_j, or key_i == key_j and i < j: the block kernel's order (ties to the lower
// index), so both kernels select the same set. Every key is in a register before the first
// shuffle, and each element is written by the lane that read it: in-place writers are safe.
template <typename Keys, typename Writer>
__global__ void __launch_bounds__(kThreads) short_row_topk_kernel(Keys keys, Writer w, int64_t rows,
                                                                   int64_t cols, uint32_t k) {
  using U = typename Keys::U;
  using S = ShuffleWord<U>;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; r < rows; r += warps) {
    const Keys rk = keys.row(r, cols);
    const Writer rw = w.row(r, cols);
    U key[kShortKeysPerLane];
    uint32_t beaten_by[kShortKeysPerLane];
#pragma unroll
    for (int u = 0; u < kShortKeysPerLane; ++u) {
      const int64_t j = lane + 32 * u;
      key[u] = j < cols ? rk.key(j) : U(0);
      beaten_by[u] = 0;
    }
#pragma unroll
    for (int v = 0; v < kShortKeysPerLane; ++v) {  // element i = 32 v + src; bounds uniform over the warp
      for (int src = 0; src < 32 && 32 * v + src < cols; ++src) {
        const int64_t i = 32 * v + src;
        const U other = static_cast<U>(__shfl_sync(0xFFFFFFFFu, static_cast<S>(key[v]), src));
#pragma unroll
        for (int u = 0; u < kShortKeysPerLane; ++u) {
          const int64_t j = lane + 32 * u;
          beaten_by[u] += (other > key[u] || (other == key[u] && i < j)) ? 1u : 0u;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kShortKeysPerLane; ++u) {
      const int64_t j = lane + 32 * u;
      if (j < cols) rw.write(j, beaten_by[u] < k);
    }
  }
}

// k of each row of `cols`, 0 <= k <= cols, rows * cols > 0. nan_cols: the row length the
// NaN count may use (any for sources that ignore rows, cols for WANDA).
template <typename Keys, typename Writer>
void select_rows(const Keys& keys, const Writer& w, int64_t rows, int64_t cols, int64_t k,
                 int64_t nan_cols, const Ctx& ctx) {
  check_nan(keys, rows * cols, nan_cols, ctx);
  if (k == 0 || k == cols) {
    fill(w, rows * cols, k == cols, ctx);
    return;
  }
  if (cols > kRowKernelMaxCols || (cols >= kWideRow && rows < sm_count(ctx.device))) {
    for (int64_t r = 0; r < rows; ++r) {
      const Keys rk = keys.row(r, cols);
      write_cut(rk, w.row(r, cols), cols, radix_select(rk, cols, k, /*exact=*/false, ctx), ctx);
    }
    return;
  }
  if (cols <= kShortRowCols) {
    auto* kernel = short_row_topk_kernel<Keys, Writer>;
    const int grid = occupancy_grid(kernel, static_cast<uint64_t>(rows) * 32, ctx.device);
    kernel<<<grid, kThreads, 0, ctx.stream>>>(keys, w, rows, cols, static_cast<uint32_t>(k));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  row_topk_kernel<Keys, Writer><<<row_grid(row_topk_kernel<Keys, Writer>, rows, ctx.device), kThreads, 0, ctx.stream>>>(
      keys, w, rows, cols, static_cast<uint32_t>(k));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace darex::cuda::topk
