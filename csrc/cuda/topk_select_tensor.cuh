// Radix select over a whole tensor (or one long row): one multi-block histogram kernel per
// digit (shared-memory bins, flushed into a global histogram), the digit walk on the host.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include <cstdint>
#include <vector>

#include "../common/radix_key.h"
#include "topk_common.cuh"

namespace darex::cuda::topk {

// Digit histogram of pass `pass` over the keys whose fixed prefix equals `prefix` (pass 0:
// all keys, and NaNs are counted). Block-local 32-bit bins: the grid keeps every block under
// 2^31 elements (flat_grid).
template <typename Keys>
__global__ void __launch_bounds__(kThreads) radix_hist_kernel(Keys keys, int64_t n, int pass,
                                                               typename Keys::U prefix, ull* hist,
                                                               ull* nan_count) {
  using U = typename Keys::U;
  __shared__ uint32_t bins[kRadixBins];
  for (int b = threadIdx.x; b < kRadixBins; b += kThreads) bins[b] = 0;
  __syncthreads();
  const U mask = radix_prefix_mask<U>(pass);
  ull nans = 0;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kTile;
  // `base` is uniform over the block, so every lane reaches hist_add together.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kTile; base < n; base += step) {
    U key[kUnroll];
    bool ok[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + static_cast<int64_t>(u * kThreads + threadIdx.x);
      ok[u] = i < n;
      key[u] = ok[u] ? keys.key(i) : U(0);
      if (pass == 0 && ok[u]) nans += keys.nan(i);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      hist_add(bins, ok[u] && (key[u] & mask) == prefix, radix_digit<U>(key[u], pass));
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kRadixBins; b += kThreads)
    if (bins[b] != 0) atomicAdd(&hist[b], static_cast<ull>(bins[b]));
  if (nans != 0) atomicAdd(nan_count, nans);
}


// Radix select of the k largest keys among n, 1 <= k <= n; raises on NaN after pass 0.
// exact: run every pass so `threshold` is the k-th key itself; otherwise stop as soon as the
// digit's whole bin is taken (threshold = the prefix, all_eq).
template <typename Keys>
Cut<typename Keys::U> radix_select(const Keys& keys, int64_t n, int64_t k, bool exact, const Ctx& ctx) {
  using U = typename Keys::U;
  const int passes = radix_passes<U>();
  const int grid = flat_grid(radix_hist_kernel<Keys>, n, ctx.device);
  std::vector<ull> host(kRadixBins + 1);
  U prefix = 0;
  int64_t remaining = k;
  for (int pass = 0; pass < passes; ++pass) {
    C10_CUDA_CHECK(cudaMemsetAsync(ctx.hist(), 0, sizeof(ull) * (kRadixBins + 1), ctx.stream));
    radix_hist_kernel<<<grid, kThreads, 0, ctx.stream>>>(keys, n, pass, prefix, ctx.hist(),
                                                          ctx.nan_counter());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    c10::cuda::memcpy_and_sync(host.data(), ctx.hist(), sizeof(ull) * (kRadixBins + 1),
                               cudaMemcpyDeviceToHost, ctx.stream);
    if (pass == 0) raise_on_nan(static_cast<int64_t>(host[kRadixBins]));
    int64_t above = 0, bin = -1;
    for (int d = kRadixBins - 1; d >= 0; --d) {
      const int64_t c = static_cast<int64_t>(host[d]);
      if (above + c >= remaining) {
        remaining -= above;
        prefix = static_cast<U>(prefix | radix_digit_bits<U>(static_cast<uint32_t>(d), pass));
        bin = c;
        break;
      }
      above += c;
    }
    TORCH_INTERNAL_ASSERT(bin >= 0, "radix select: k exceeds the candidates");
    const bool last = pass + 1 == passes;
    if (bin == remaining && (last || !exact)) return {prefix, k - remaining, remaining, true};
    if (last) return {prefix, k - remaining, remaining, false};
  }
  TORCH_INTERNAL_ASSERT(false, "radix select: no passes");
  return {};
}

}  // namespace darex::cuda::topk
