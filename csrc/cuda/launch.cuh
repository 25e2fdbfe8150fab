// Launch policy shared by the darex CUDA kernels: one thread per Philox block (4 elements),
// grid-stride loops with a grid sized to fill every SM a few times over.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common/philox.h"

namespace darex::cuda {

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 8;
constexpr int kElemsPerThread = 4;  // one Philox block of words per loop iteration

int sm_count(int device);

inline int grid_for(uint64_t philox_blocks, int device) {
  const uint64_t needed = (philox_blocks + kThreads - 1) / kThreads;
  const uint64_t cap = static_cast<uint64_t>(sm_count(device)) * kBlocksPerSm;
  return static_cast<int>(needed < cap ? (needed > 0 ? needed : 1) : cap);
}

// Number of Philox blocks that cover flat indices [offset, offset + n), n > 0.
inline uint64_t philox_blocks(uint64_t offset, int64_t n) {
  return ((offset + static_cast<uint64_t>(n) - 1) >> 2) - (offset >> 2) + 1;
}

// Calls op(i0, words) for every Philox block covering [offset, offset + n): i0 is the local
// index of the block's word 0 (negative for a block that starts before the tensor).
template <typename Op>
__global__ void __launch_bounds__(kThreads) seeded_blocks_kernel(Op op, uint64_t seed,
                                                                  uint64_t offset, uint64_t blocks) {
  const uint64_t first = offset >> 2;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t t = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < blocks;
       t += stride) {
    const uint64_t b = first + t;
    op(static_cast<int64_t>(4 * b - offset), philox_block(seed, b));
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
