// Mask spec v2 ("skip") on CUDA: a block per stripe piece. Thread 0 walks the stripe
// (common/skip_mask.h; O(rare) draws) into a shared list of the piece's rare positions, then the
// whole block applies the op to the piece with coalesced loads and stores: a fill of the common
// outcome plus the rare elements (keep_mask, and prune_ / dare when keep is rare: only the kept
// values are read), or the dense element math with a shared keep flag per element (drop rare).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/skip_mask.h"

namespace darex::cuda {

constexpr int kSkipThreads = 256;

// The gap table of p on `device` (built on the host, the only place the spec allows).
inline at::Tensor skip_table_on(double p, const at::Device& device) {
  std::vector<uint32_t> host(kSkipStripe);
  skip_table_build(p, host.data());
  at::Tensor t = at::empty({kSkipStripe}, at::TensorOptions().dtype(at::kInt));
  std::memcpy(t.data_ptr<int32_t>(), host.data(), sizeof(uint32_t) * host.size());
  return t.to(device);
}

// Where the pieces of [0, n) (flat indices offset + [0, n)) lie: piece b is stripe first + b.
struct StripePieces {
  uint64_t seed;
  uint64_t offset;
  int64_t n;
  uint64_t first;   // first stripe
  int64_t count;    // stripes met
  const uint32_t* table;
  bool rare_is_keep;

  // Tensor-local [begin, end) of piece b.
  __device__ __forceinline__ void range(int64_t b, int64_t& begin, int64_t& end) const {
    const uint64_t stripe_start = (first + static_cast<uint64_t>(b)) << kSkipStripeLog2;
    begin = stripe_start > offset ? static_cast<int64_t>(stripe_start - offset) : 0;
    const int64_t stop = static_cast<int64_t>(stripe_start + kSkipStripe - offset);
    end = stop < n ? stop : n;
  }
};

inline StripePieces stripe_pieces(uint64_t seed, uint64_t offset, int64_t n, const at::Tensor& table, double p) {
  const uint64_t first = offset >> kSkipStripeLog2;
  const uint64_t last = (offset + static_cast<uint64_t>(n) - 1) >> kSkipStripeLog2;
  return StripePieces{seed, offset, n, first, static_cast<int64_t>(last - first + 1),
                      reinterpret_cast<const uint32_t*>(table.data_ptr<int32_t>()), skip_rare_is_keep(p)};
}

// Thread 0 walks piece b's stripe; rare[0..*count) become the piece-relative rare indices.
// Ends with a barrier, so the whole block sees the list.
__device__ __forceinline__ void walk_piece(const StripePieces& sp, int64_t b, int64_t begin, int64_t end,
                                           int16_t* rare, int* count) {
  if (threadIdx.x == 0) {
    const uint64_t flat = sp.offset + static_cast<uint64_t>(begin);
    const int32_t start = static_cast<int32_t>(flat & (kSkipStripe - 1));
    const int32_t stop = start + static_cast<int32_t>(end - begin);
    SkipWalker walk(sp.seed, sp.first + static_cast<uint64_t>(b), sp.table);
    int k = 0;
    if (sp.table[kSkipStripe - 1] != 0u)
      for (int32_t r = walk.seek(start); r < stop; r = walk.next()) rare[k++] = static_cast<int16_t>(r - start);
    *count = k;
  }
  __syncthreads();
}

// op(begin, len, rare, count) for every piece, a block each (grid-stride).
template <typename Op>
__global__ void __launch_bounds__(kSkipThreads) skip_pieces_kernel(Op op, StripePieces sp) {
  __shared__ int16_t rare[kSkipStripe];
  __shared__ int count;
  for (int64_t b = blockIdx.x; b < sp.count; b += gridDim.x) {  // uniform over the block
    int64_t begin, end;
    sp.range(b, begin, end);
    walk_piece(sp, b, begin, end, rare, &count);
    op(sp, begin, static_cast<int>(end - begin), rare, count);
    __syncthreads();  // rare / count are reused by the next piece
  }
}

// The spec v2 keep mask of flat elements offset + [0, n) into m (cuda/prune_kernel.cu).
void skip_keep_mask(bool* m, double p, uint64_t seed, uint64_t offset, int64_t n, const at::Device& device);

template <typename Op>
void launch_skip(const Op& op, const StripePieces& sp, int device) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const int64_t grid = sp.count < (int64_t(1) << 20) ? sp.count : (int64_t(1) << 20);
  skip_pieces_kernel<Op><<<static_cast<unsigned>(grid), kSkipThreads, 0, stream>>>(op, sp);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace darex::cuda
