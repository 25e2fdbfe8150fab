// The whole-tensor write pass: every key above the threshold key K is taken; when only some of
// the keys equal to K are taken, the tensor is cut into fixed chunks, keys == K are counted per
// chunk and scanned, and only the chunk where the running count crosses `need_eq` ranks its ties
// element by element (lower index wins). select_whole runs a whole-tensor select and this write.
// Extra device memory, whatever the data (all zeros, few values, ties): the 2049 select counters
// and two int64 per chunk (a chunk is at least 4096 elements, at most kMaxChunks chunks), so at
// most n / 256 bytes and 16 MiB; ties are counted per chunk, never gathered.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cstdint>

#include "topk_common.cuh"
#include "topk_select_tensor.cuh"

namespace darex::cuda::topk {

// selected = key > thr, or key == thr when take_eq.
template <typename Keys, typename Writer>
__global__ void __launch_bounds__(kThreads) threshold_write_kernel(Keys keys, Writer w, int64_t n,
                                                                    typename Keys::U thr, bool take_eq) {
  using U = typename Keys::U;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const U key = keys.key(i);
    w.write(i, key > thr || (take_eq && key == thr));
  }
}

// counts[b] = number of keys == thr in chunk b = [b * chunk, min(n, (b + 1) * chunk)).
template <typename Keys>
__global__ void __launch_bounds__(kThreads) eq_count_kernel(Keys keys, int64_t n, int64_t chunk,
                                                             typename Keys::U thr, int64_t* counts) {
  using Reduce = cub::BlockReduce<long long, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t end = n - begin < chunk ? n : begin + chunk;
  long long count = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) count += keys.key(i) == thr;
  const long long total = Reduce(tmp).Sum(count);
  if (threadIdx.x == 0) counts[blockIdx.x] = total;
}

// Writes chunk b (same partition as eq_count_kernel). Keys == thr before this chunk:
// inclusive[b] - counts[b]; the first need_eq of them overall are selected. A chunk entirely
// below or above that rank takes all or none of its ties; only the chunk crossing it ranks
// its ties tile by tile with a block scan, in index order.
template <typename Keys, typename Writer>
__global__ void __launch_bounds__(kThreads) ordered_write_kernel(Keys keys, Writer w, int64_t n,
                                                                  int64_t chunk, typename Keys::U thr,
                                                                  int64_t need_eq, const int64_t* counts,
                                                                  const int64_t* inclusive) {
  using U = typename Keys::U;
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t end = n - begin < chunk ? n : begin + chunk;
  const int64_t after = inclusive[blockIdx.x];
  const int64_t before = after - counts[blockIdx.x];
  if (after <= need_eq || before >= need_eq) {  // uniform over the block
    const bool take_eq = after <= need_eq;
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const U key = keys.key(i);
      w.write(i, key > thr || (take_eq && key == thr));
    }
    return;
  }
  int64_t rank = before;  // ties before the current tile; uniform over the block
  for (int64_t base = begin; base < end; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const bool valid = i < end;
    const U key = valid ? keys.key(i) : U(0);
    if (rank >= need_eq) {
      if (valid) w.write(i, key > thr);
      continue;
    }
    const int eq = (valid && key == thr) ? 1 : 0;
    int pos = 0, tile_eq = 0;
    Scan(scan).ExclusiveSum(eq, pos, tile_eq);
    if (valid) w.write(i, key > thr || (eq != 0 && rank + pos < need_eq));
    rank += tile_eq;
    __syncthreads();  // scan storage reused by the next tile
  }
}

template <typename Keys, typename Writer>
void write_cut(const Keys& keys, const Writer& w, int64_t n, const Cut<typename Keys::U>& cut,
               const Ctx& ctx) {
  if (cut.all_eq) {
    threshold_write_kernel<Keys, Writer><<<flat_grid(threshold_write_kernel<Keys, Writer>, n, ctx.device), kThreads, 0, ctx.stream>>>(keys, w, n,
                                                                                  cut.threshold, true);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const int64_t tiles = std::max(kMinChunkTiles, (n + kThreads * kMaxChunks - 1) / (kThreads * kMaxChunks));
  const int64_t chunk = tiles * kThreads;
  const int64_t chunks = (n + chunk - 1) / chunk;  // <= kMaxChunks
  at::Tensor counts = at::empty({chunks}, ctx.index_options);
  eq_count_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, ctx.stream>>>(
      keys, n, chunk, cut.threshold, counts.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor inclusive = at::cumsum(counts, 0);
  ordered_write_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, ctx.stream>>>(
      keys, w, n, chunk, cut.threshold, cut.need_eq, counts.data_ptr<int64_t>(),
      inclusive.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Whole tensor: k of n, 0 <= k <= n, n > 0. NaN raises before any write.
template <typename Keys, typename Writer>
void select_whole(const Keys& keys, const Writer& w, int64_t n, int64_t k, const Ctx& ctx) {
  if (k == 0 || k == n) {
    check_nan(keys, n, kNanSpan, ctx);
    fill(w, n, k == n, ctx);
    return;
  }
  write_cut(keys, w, n, radix_select(keys, n, k, /*exact=*/false, ctx), ctx);
}

}  // namespace darex::cuda::topk
