// Shared pieces of the CUDA storage kernels. Work is cut into tiles that one warp owns: 1024
// elements of the flat index for seeded masks (256 Philox blocks, one per lane per round), 1024
// columns of one row of the 2-D view for bitmask / CSR (one element per lane per round). A first
// kernel counts each tile's kept values (and writes the mask bits the format needs), an exclusive
// scan over the tile counts gives each tile its first value index, and a second kernel packs or
// scatters: in every round the lanes rank their kept elements with a ballot (or a warp scan of
// nibble counts), so a warp reads and writes 32 consecutive elements and consecutive values.
// Temporaries: one int64 count per tile (1/1024 of the elements) plus the mask bits.
// Deterministic, and no warp writes outside its own tile's elements or values.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/select.h>
#include <ATen/ops/sub.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <utility>

#include "../common/bitpack.h"
#include "../common/dare_math.h"
#include "../common/philox.h"
#include "launch.cuh"

namespace darex::cuda {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int kTileRounds = 32;                    // bitmask / CSR: 32 rounds of 32 columns
constexpr int64_t kTileCols = kWarp * kTileRounds;  // 1024 columns of one row
constexpr int kSeededRounds = 8;                   // seeded: 8 rounds of 32 Philox blocks
constexpr int64_t kSeededTileBlocks = kWarp * kSeededRounds;  // 256 blocks = 1024 elements

// Grid-stride index range for `items` work items of one thread.
#define DAREX_GRID_STRIDE(i, items)                                                              \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (items); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// Grid-stride range for `items` work items of one warp each. The bound is the same for every
// lane of a warp (blockDim.x is a multiple of 32), so warp collectives inside are safe.
#define DAREX_WARP_STRIDE(i, items)                                                                       \
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; i < (items); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp)

__device__ __forceinline__ int lane_id() { return static_cast<int>(threadIdx.x) & (kWarp - 1); }

// Bits of the lanes below this one: with a ballot, a kept element's rank among its warp's.
__device__ __forceinline__ uint32_t lanes_below() { return (1u << lane_id()) - 1u; }

__device__ __forceinline__ uint32_t warp_sum(uint32_t v) {
#pragma unroll
  for (int d = kWarp / 2; d > 0; d >>= 1) v += __shfl_xor_sync(kFullMask, v, d);
  return v;
}

// Inclusive prefix sum over the lanes.
__device__ __forceinline__ uint32_t warp_inclusive_scan(uint32_t v) {
  const int lane = lane_id();
#pragma unroll
  for (int d = 1; d < kWarp; d <<= 1) {
    const uint32_t u = __shfl_up_sync(kFullMask, v, d);
    if (lane >= d) v += u;
  }
  return v;
}

template <typename... Args>
int grid_for_items(void (*kernel)(Args...), int64_t items, int device) {
  return occupancy_grid(kernel, static_cast<uint64_t>(items > 0 ? items : 1), device);
}

// Grid for `items` work items of one warp each.
template <typename... Args>
int grid_for_warps(void (*kernel)(Args...), int64_t items, int device) {
  return grid_for_items(kernel, items * kWarp, device);
}

inline cudaStream_t stream_of(int device) { return c10::cuda::getCurrentCUDAStream(device).stream(); }

// Exclusive starts of per-tile counts (int64), no host synchronization.
inline at::Tensor exclusive_starts_on_device(const at::Tensor& counts) {
  if (counts.numel() == 0) return counts;
  return at::sub(at::cumsum(counts, 0), counts);
}

// (exclusive starts, total) of per-tile counts. Synchronizes once for the total.
inline std::pair<at::Tensor, int64_t> exclusive_starts(const at::Tensor& counts) {
  if (counts.numel() == 0) return {counts, 0};
  const at::Tensor inclusive = at::cumsum(counts, 0);
  const int64_t total = inclusive.select(0, -1).item<int64_t>();
  return {at::sub(inclusive, counts), total};
}

// A tile of the 2-D view: row r, columns [c0, c0 + kTileCols).
struct RowTile {
  int64_t row, c0;
};

__device__ __forceinline__ RowTile row_tile(int64_t t, int64_t tiles_per_row) {
  const int64_t r = t / tiles_per_row;  // one division per 1024 elements
  return {r, (t - r * tiles_per_row) * kTileCols};
}

inline int64_t tiles_per_row(int64_t cols) { return (cols + kTileCols - 1) / kTileCols; }

// Bit of column c (< cols) of row r in a [rows, bpr] bitmask.
__device__ __forceinline__ uint32_t bitmask_bit(const uint8_t* bm, int64_t bpr, int64_t r, int64_t c) {
  return (static_cast<uint32_t>(bm[r * bpr + (c >> 3)]) >> (c & 7)) & 1u;
}

}  // namespace darex::cuda
