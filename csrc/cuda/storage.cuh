// Shared pieces of the CUDA storage kernels. Work is cut into fixed "words" of elements (32 for
// seeded masks, 8 = one bitmask byte for bitmask / CSR): a first kernel writes each word's
// mask bits and count, an exclusive scan (at::cumsum) gives every word the index of its first
// value, and a second kernel compacts or scatters word by word. Deterministic, and no
// thread ever writes outside its own word's elements or values.
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

// Grid-stride index range for `items` work items.
#define DAREX_GRID_STRIDE(i, items)                                                              \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (items); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename... Args>
int grid_for_items(void (*kernel)(Args...), int64_t items, int device) {
  return occupancy_grid(kernel, static_cast<uint64_t>(items > 0 ? items : 1), device);
}

inline cudaStream_t stream_of(int device) { return c10::cuda::getCurrentCUDAStream(device).stream(); }

// Keep bits of local elements [first, first + count) (count <= 32) of a seeded tensor.
__device__ __forceinline__ uint32_t keep_word(uint64_t seed, uint64_t offset, int64_t first, int count,
                                              uint32_t thr) {
  uint32_t m = 0;
  Philox4 r{{0u, 0u, 0u, 0u}};
  uint64_t current = ~uint64_t(0);
  for (int j = 0; j < count; ++j) {
    const uint64_t idx = offset + static_cast<uint64_t>(first + j);
    if ((idx >> 2) != current) {
      current = idx >> 2;
      r = philox_block(seed, current);
    }
    m |= static_cast<uint32_t>(is_kept(r.v[idx & 3], thr)) << j;
  }
  return m;
}

// (exclusive starts, total) of per-word counts (int64). Synchronizes once for the total.
inline std::pair<at::Tensor, int64_t> exclusive_starts(const at::Tensor& counts) {
  if (counts.numel() == 0) return {counts, 0};
  const at::Tensor inclusive = at::cumsum(counts, 0);
  const int64_t total = inclusive.select(0, -1).item<int64_t>();
  return {at::sub(inclusive, counts), total};
}

}  // namespace darex::cuda
