// Launch policy shared by the darex CUDA kernels: one thread per Philox block (4 elements),
// grid-stride loops with 64-bit indices, and a grid of at most one wave: as many blocks as can be
// resident at once, which the kernel's own register and shared-memory use decides.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../common/philox.h"
#include "../common/row_cursor.h"

namespace darex::cuda {

constexpr int kThreads = 256;
// Upper bound on resident blocks per SM: 8 x 256 = 2048 threads, the most any SM holds. The
// occupancy API below lowers it per kernel; a grid of more blocks than fit at once leaves a
// nearly idle second wave (a 40-register kernel fits 6 blocks of 256, not 8).
constexpr int kBlocksPerSm = 8;
constexpr int kElemsPerThread = 4;  // one Philox block of words per loop iteration

int sm_count(int device);

// Resident blocks per SM of `kernel` launched with `threads` threads and `dynamic_smem` bytes on
// `device` (cudaOccupancyMaxActiveBlocksPerMultiprocessor), at least 1, at most kBlocksPerSm.
// Cached per (kernel, device, threads, smem): after the first call a launch costs one lookup.
int max_active_blocks(const void* kernel, int device, int threads, size_t dynamic_smem);

// Blocks the whole GPU runs at once: the grid cap of a grid-stride kernel.
template <typename... Args>
int occupancy_cap(void (*kernel)(Args...), int device, int threads = kThreads, size_t dynamic_smem = 0) {
  return sm_count(device) *
         max_active_blocks(reinterpret_cast<const void*>(kernel), device, threads, dynamic_smem);
}

// Grid for a grid-stride kernel with `items` work items of one thread each: one block per
// `threads` items, at most one wave (occupancy_cap), at least 1. The kernel loops with 64-bit
// indices and stride gridDim.x * blockDim.x, so any `items` is covered.
//   auto* k = seeded_blocks_kernel<Op>;
//   k<<<occupancy_grid(k, blocks, device), kThreads, 0, stream>>>(op, seed, offset, blocks);
template <typename... Args>
int occupancy_grid(void (*kernel)(Args...), uint64_t items, int device, int threads = kThreads,
                   size_t dynamic_smem = 0) {
  const uint64_t t = static_cast<uint64_t>(threads);
  const uint64_t needed = items / t + (items % t != 0);
  const uint64_t cap = static_cast<uint64_t>(occupancy_cap(kernel, device, threads, dynamic_smem));
  return static_cast<int>(needed < cap ? (needed > 0 ? needed : 1) : cap);
}

// Number of Philox blocks that cover flat indices [offset, offset + n), n > 0.
inline uint64_t philox_blocks(uint64_t offset, int64_t n) {
  return ((offset + static_cast<uint64_t>(n) - 1) >> 2) - (offset >> 2) + 1;
}

// Calls op(i0, words, cursor) for every Philox block covering [offset, offset + n): i0 is the
// local index of the block's word 0 (negative for a block that starts before the tensor), cursor
// the row of i0 for ops with per-row data (op.row_len > 0; 0 for none), tracked across the
// grid-stride loop so no element pays a division.
template <typename Op>
__global__ void __launch_bounds__(kThreads) seeded_blocks_kernel(Op op, uint64_t seed,
                                                                  uint64_t offset, uint64_t blocks) {
  const uint64_t first = offset >> 2;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  uint64_t t = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= blocks) return;
  RowCursor cursor = RowCursor::at(static_cast<int64_t>(4 * (first + t) - offset), op.row_len);
  const RowStep step = RowStep::of(static_cast<int64_t>(4 * stride), op.row_len);
  for (; t < blocks; t += stride, cursor.advance(step)) {
    const uint64_t b = first + t;
    op(static_cast<int64_t>(4 * b - offset), philox_block(seed, b), cursor);
  }
}

// Four elements moved as one aligned access (float4 / 8-byte half4, ...).
template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

template <typename T>
inline bool vec4_aligned(const void* p, uint64_t offset) {
  return (offset & 3) == 0 && reinterpret_cast<uintptr_t>(p) % sizeof(Vec4<T>) == 0;
}

}  // namespace darex::cuda
