// Shared pieces of the CUDA top-k phases (topk_select_tensor.cuh, topk_select_rows.cuh,
// topk_write.cuh): tile constants, the warp-aggregated histogram update, the launch context that
// owns the device counters, the NaN count that runs before anything is written, and the fill
// used when k is 0 or the whole slice.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "../common/radix_key.h"
#include "launch.cuh"

namespace darex::cuda::topk {

using ull = unsigned long long;

constexpr int kUnroll = 4;                    // independent loads in flight per thread
constexpr int kTile = kThreads * kUnroll;     // elements per block per histogram iteration
constexpr int kBinsPerThread = kRadixBins / kThreads;
constexpr int64_t kNanSpan = 1 << 14;         // elements per block-iteration of the NaN count
constexpr int64_t kMaxChunks = 1 << 20;       // chunks of the ordered whole-tensor write
constexpr int64_t kMinChunkTiles = 16;
constexpr int64_t kWideRow = 1 << 20;         // fewer rows than SMs this long: whole-tensor path
constexpr int64_t kRowKernelMaxCols = int64_t(1) << 30;  // keeps per-row uint32 counts exact
static_assert(kRadixBins % kThreads == 0, "each thread owns whole bins in the digit search");
static_assert(kThreads % 32 == 0, "histogram updates are warp-aggregated");

// One count per distinct digit of the warp: pass-0 digits of similar scores mostly collide,
// and 32 lanes hitting one shared counter would serialize. All 32 lanes must call it.
__device__ __forceinline__ void hist_add(uint32_t* bins, bool valid, uint32_t digit) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  const unsigned peers = __match_any_sync(0xFFFFFFFFu, valid ? digit : 0xFFFFFFFFu);
  if (valid && (threadIdx.x & 31u) == static_cast<unsigned>(__ffs(static_cast<int>(peers)) - 1))
    atomicAdd(&bins[digit], static_cast<uint32_t>(__popc(peers)));
#else
  if (valid) atomicAdd(&bins[digit], 1u);
#endif
}

// NaN count over n elements seen as rows of `cols` (the last may be short); a block per row.
template <typename Keys>
__global__ void __launch_bounds__(kThreads) nan_count_kernel(Keys keys, int64_t n, int64_t cols,
                                                              ull* nan_count) {
  const int64_t rows = (n + cols - 1) / cols;
  ull nans = 0;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const Keys row = keys.row(r, cols);
    const int64_t len = n - r * cols < cols ? n - r * cols : cols;
    for (int64_t j = threadIdx.x; j < len; j += kThreads) nans += row.nan(j);
  }
  if (nans != 0) atomicAdd(nan_count, nans);
}

template <typename Writer>
__global__ void __launch_bounds__(kThreads) fill_kernel(Writer w, int64_t n, bool selected) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride)
    w.write(i, selected);
}


template <typename U>
struct Cut {
  U threshold;      // select key > threshold, and ties as below
  int64_t beyond;   // keys > threshold (exact only when the select ran all passes)
  int64_t need_eq;  // ties (key == threshold) to select, lowest indices first
  bool all_eq;      // every tie is selected: no ordering needed
};

// Per-op launch context; owns the device counters (kRadixBins bins + 1 NaN counter).
struct Ctx {
  int device;
  cudaStream_t stream;
  at::TensorOptions index_options;
  at::Tensor counters;
  ull* hist() const { return reinterpret_cast<ull*>(counters.data_ptr<int64_t>()); }
  ull* nan_counter() const { return hist() + kRadixBins; }
};

inline Ctx make_ctx(const at::Tensor& like) {
  const int device = like.get_device();
  const at::TensorOptions opts = like.options().dtype(at::kLong);
  return Ctx{device, c10::cuda::getCurrentCUDAStream(device).stream(), opts,
             at::empty({kRadixBins + 1}, opts)};
}

inline void raise_on_nan(int64_t nans) {
  TORCH_CHECK_VALUE(nans == 0, "scores contain ", nans, " NaN value(s); top-k needs ordered scores");
}

// Grid of the grid-stride element kernels: enough blocks to fill the GPU, and enough that no
// block sees 2^31 elements (its 32-bit shared histogram counters stay exact).
template <typename... Args>
int flat_grid(void (*kernel)(Args...), int64_t n, int device) {
  const int64_t needed = (n + kTile - 1) / kTile;
  const int64_t cap = occupancy_cap(kernel, device);
  const int64_t g = std::max({std::min(needed, cap), (n >> 31) + 1, int64_t(1)});
  TORCH_CHECK(g <= INT_MAX, "tensor too large for the top-k kernels: ", n, " elements");
  return static_cast<int>(g);
}

template <typename... Args>
int row_grid(void (*kernel)(Args...), int64_t rows, int device) {
  const int64_t cap = occupancy_cap(kernel, device);
  return static_cast<int>(std::max<int64_t>(1, std::min(rows, cap)));
}

// Counts NaN over n elements (as rows of `cols`, the row structure of the key source) and
// raises before the caller writes anything.
template <typename Keys>
void check_nan(const Keys& keys, int64_t n, int64_t cols, const Ctx& ctx) {
  ull* counter = ctx.nan_counter();
  C10_CUDA_CHECK(cudaMemsetAsync(counter, 0, sizeof(ull), ctx.stream));
  nan_count_kernel<Keys><<<row_grid(nan_count_kernel<Keys>, (n + cols - 1) / cols, ctx.device), kThreads, 0, ctx.stream>>>(
      keys, n, cols, counter);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  ull nans = 0;
  c10::cuda::memcpy_and_sync(&nans, counter, sizeof(ull), cudaMemcpyDeviceToHost, ctx.stream);
  raise_on_nan(static_cast<int64_t>(nans));
}

template <typename Writer>
void fill(const Writer& w, int64_t n, bool selected, const Ctx& ctx) {
  if (selected && !w.writes_kept()) return;
  fill_kernel<Writer><<<flat_grid(fill_kernel<Writer>, n, ctx.device), kThreads, 0, ctx.stream>>>(w, n, selected);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace darex::cuda::topk
