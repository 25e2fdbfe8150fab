// CUDA kernels of the seeded storage format. A warp owns a tile of 256 Philox blocks (1024
// elements); in each of its 8 rounds lane j regenerates block j of the round and takes its 4
// keep bits as a nibble. The count pass writes the nibbles as a bit array (bit 4B + w: word w
// of relative block B) and one count per tile; pack and scatter place each lane's kept values
// with a warp scan of the nibble counts, so consecutive lanes read and write consecutive
// elements and values. See storage.cuh. Spec v2: the keep mask is first written as bytes by the
// stripe walk (skip_walk.cuh) and the nibbles are read from it instead of from Philox.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/row_cursor.h"
#include "../ops/storage_args.h"
#include "skip_walk.cuh"
#include "storage.cuh"

namespace darex::cuda {
namespace {

// The Philox blocks covering [offset, offset + n): relative block B is absolute block
// (offset >> 2) + B, whose word w is local element 4 * ((offset >> 2) + B) + w - offset.
struct SeededBlocks {
  uint64_t seed, offset;
  int64_t n;
  uint64_t blocks;
  uint32_t thr;
  const bool* keep;  // spec v2: the keep mask of [0, n); nullptr: spec v1's words

  __device__ __forceinline__ int64_t first_element(uint64_t rel) const {
    return static_cast<int64_t>(4 * ((offset >> 2) + rel) - offset);
  }
  // Keep bits (bit w: element first_element(rel) + w) of relative block rel; 0 past the end.
  __device__ __forceinline__ uint32_t nibble(uint64_t rel) const {
    if (rel >= blocks) return 0u;
    const int64_t i0 = first_element(rel);
    uint32_t m = 0;
    if (keep != nullptr) {
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const int64_t i = i0 + w;
        m |= static_cast<uint32_t>(i >= 0 && i < n && keep[i]) << w;
      }
      return m;
    }
    const Philox4 r = philox_block(seed, (offset >> 2) + rel);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t i = i0 + w;
      m |= static_cast<uint32_t>(i >= 0 && i < n && is_kept(r.v[w], thr)) << w;
    }
    return m;
  }
  __host__ __device__ int64_t tiles() const { return static_cast<int64_t>((blocks + kSeededTileBlocks - 1) / kSeededTileBlocks); }
  __host__ __device__ int64_t words() const { return static_cast<int64_t>((blocks + 7) / 8); }  // 8 nibbles per word
};

__device__ __forceinline__ uint32_t stored_nibble(const uint32_t* bits, uint64_t rel, uint64_t blocks) {
  return rel < blocks ? (bits[rel >> 3] >> (4 * (rel & 7))) & 0xFu : 0u;
}

// counts[t] = kept elements of tile t; bits (when not null) = the nibbles, 8 per word.
__global__ void __launch_bounds__(kThreads) keep_tiles_kernel(SeededBlocks sb, uint32_t* bits, int64_t* counts) {
  const int lane = lane_id();
  const int64_t tiles = sb.tiles();
  const int64_t words = sb.words();
  DAREX_WARP_STRIDE(t, tiles) {
    uint32_t total = 0;
    for (int round = 0; round < kSeededRounds; ++round) {
      const uint64_t rel = static_cast<uint64_t>(t * kSeededTileBlocks + round * kWarp + lane);
      const uint32_t m = sb.nibble(rel);
      total += __popc(m);
      if (bits != nullptr) {  // uniform: the 8 lanes of a word OR their nibbles together
        uint32_t word = m << (4 * (lane & 7));
        word |= __shfl_xor_sync(kFullMask, word, 1);
        word |= __shfl_xor_sync(kFullMask, word, 2);
        word |= __shfl_xor_sync(kFullMask, word, 4);
        const int64_t wi = static_cast<int64_t>(rel >> 3);
        if ((lane & 7) == 0 && wi < words) bits[wi] = word;
      }
    }
    total = warp_sum(total);
    if (lane == 0) counts[t] = total;
  }
}

// Rows of per-row q for lane `lane` of the warp: a cursor at the lane's first element of its
// first tile, stepped by one round (128 elements) and, between tiles, by the warp's stride.
struct LaneRows {
  RowCursor tile;
  RowStep round_step, tile_step;
};

__device__ __forceinline__ LaneRows lane_rows(const SeededBlocks& sb, int64_t first_tile, int64_t row_len) {
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp;
  LaneRows lr;
  lr.tile = RowCursor::at(sb.first_element(static_cast<uint64_t>(first_tile * kSeededTileBlocks + lane_id())), row_len);
  lr.round_step = RowStep::of(4 * kWarp, row_len);
  lr.tile_step = RowStep::of(warps * 4 * kSeededTileBlocks, row_len);
  return lr;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) seeded_pack_kernel(const scalar_t* x, SeededBlocks sb,
                                                                const uint32_t* bits,
                                                                const int64_t* starts,
                                                                const acc_t* q_rows, acc_t inv_scalar,
                                                                int64_t row_len, scalar_t* values) {
  const int64_t tiles = sb.tiles();
  const int64_t first_tile = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  LaneRows lr = lane_rows(sb, first_tile, q_rows != nullptr ? row_len : 0);
  DAREX_WARP_STRIDE(t, tiles) {
    int64_t k = starts[t];
    RowCursor cursor = lr.tile;
    for (int round = 0; round < kSeededRounds; ++round) {
      const uint64_t rel = static_cast<uint64_t>(t * kSeededTileBlocks + round * kWarp + lane_id());
      const uint32_t m = stored_nibble(bits, rel, sb.blocks);
      const uint32_t c = __popc(m);
      const uint32_t inclusive = warp_inclusive_scan(c);
      if (m != 0) {
        const int64_t i0 = sb.first_element(rel);
        int64_t rows[4];
        cursor.group_rows(rows);
        int64_t pos = k + (inclusive - c);
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          if (((m >> w) & 1u) == 0) continue;
          const acc_t inv = q_rows == nullptr ? inv_scalar : inverse_q<acc_t>(q_rows[rows[w]]);
          values[pos++] = prune_store(x[i0 + w], inv, true);
        }
      }
      k += __shfl_sync(kFullMask, inclusive, kWarp - 1);
      cursor.advance(lr.round_step);
    }
    lr.tile.advance(lr.tile_step);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) seeded_scatter_kernel(scalar_t* out, SeededBlocks sb,
                                                                   const uint32_t* bits,
                                                                   const int64_t* starts,
                                                                   const scalar_t* values,
                                                                   acc_of<scalar_t> alpha,
                                                                   bool accumulate, bool vec) {
  const int64_t tiles = sb.tiles();
  DAREX_WARP_STRIDE(t, tiles) {
    int64_t k = starts[t];
    for (int round = 0; round < kSeededRounds; ++round) {
      const uint64_t rel = static_cast<uint64_t>(t * kSeededTileBlocks + round * kWarp + lane_id());
      const uint32_t m = stored_nibble(bits, rel, sb.blocks);
      const uint32_t c = __popc(m);
      const uint32_t inclusive = warp_inclusive_scan(c);
      if (rel < sb.blocks && (m != 0 || !accumulate)) {
        const int64_t i0 = sb.first_element(rel);
        int64_t pos = k + (inclusive - c);
        if (!accumulate && vec && i0 + 4 <= sb.n) {  // i0 >= 0: vec means offset % 4 == 0
          Vec4<scalar_t> v;
#pragma unroll
          for (int w = 0; w < 4; ++w) v.v[w] = ((m >> w) & 1u) ? values[pos++] : storage_zero<scalar_t>();
          *reinterpret_cast<Vec4<scalar_t>*>(out + i0) = v;
        } else {
#pragma unroll
          for (int w = 0; w < 4; ++w) {
            const int64_t i = i0 + w;
            const bool kept = (m >> w) & 1u;  // only for 0 <= i < n
            if (accumulate) {
              if (kept) out[i] = add_scaled(out[i], values[pos++], alpha);
            } else if (i >= 0 && i < sb.n) {
              out[i] = kept ? values[pos++] : storage_zero<scalar_t>();
            }
          }
        }
      }
      k += __shfl_sync(kFullMask, inclusive, kWarp - 1);
    }
  }
}

struct KeepTiles {
  at::Tensor bits;    // uint32 nibble words (int32 storage); empty for a count only
  at::Tensor starts;  // int64 exclusive starts per tile
  int64_t total;
};

// `keep` (spec v2) must outlive the kernels that read it: seeded_keep holds it.
SeededBlocks seeded_blocks(int64_t n, double p, int64_t seed, int64_t offset, const at::Tensor& keep) {
  return SeededBlocks{static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n,
                      n > 0 ? philox_blocks(static_cast<uint64_t>(offset), n) : 0, drop_threshold(p),
                      keep.defined() ? keep.data_ptr<bool>() : nullptr};
}

// The spec v2 keep mask as bytes, or an undefined tensor for spec v1.
at::Tensor seeded_keep(const at::Tensor& like, int64_t n, double p, int64_t seed, int64_t offset, int64_t mask_spec) {
  if (mask_spec != kMaskSkip || n == 0) return at::Tensor();
  at::Tensor keep = at::empty({n}, like.options().dtype(at::kBool));
  skip_keep_mask(keep.data_ptr<bool>(), p, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n, like.device());
  return keep;
}

at::Tensor tile_counts(const at::Tensor& like, const SeededBlocks& sb, uint32_t* bits) {
  const int64_t tiles = sb.tiles();
  at::Tensor counts = at::empty({tiles}, like.options().dtype(at::kLong));
  if (tiles > 0) {
    const int device = like.get_device();
    keep_tiles_kernel<<<grid_for_warps(keep_tiles_kernel, tiles, device), kThreads, 0, stream_of(device)>>>(
        sb, bits, counts.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return counts;
}

KeepTiles keep_tiles(const at::Tensor& like, const SeededBlocks& sb) {
  KeepTiles kt;
  kt.bits = at::empty({sb.words()}, like.options().dtype(at::kInt));
  const at::Tensor counts = tile_counts(like, sb, reinterpret_cast<uint32_t*>(kt.bits.data_ptr<int32_t>()));
  auto [starts, total] = exclusive_starts(counts);
  kt.starts = starts;
  kt.total = total;
  return kt;
}

at::Tensor seeded_pack_cuda(const at::Tensor& delta, double p, int64_t seed, int64_t offset,
                            const std::optional<at::Tensor>& q_rows, double q, int64_t mask_spec) {
  TORCH_CHECK(delta.is_cuda(), "delta must be a CUDA tensor");
  const int64_t row_len = check_prune_args(delta, p, offset, q_rows, q, mask_spec);
  mask_spec = effective_mask_spec(mask_spec, p);
  const c10::cuda::CUDAGuard guard(delta.device());
  const int64_t n = delta.numel();
  if (n == 0) return at::empty({0}, delta.options());
  const at::Tensor x = delta.contiguous();
  const at::Tensor keep = seeded_keep(x, n, p, seed, offset, mask_spec);
  const SeededBlocks sb = seeded_blocks(n, p, seed, offset, keep);
  const KeepTiles kt = keep_tiles(x, sb);
  at::Tensor values = at::empty({kt.total}, delta.options());
  if (kt.total == 0) return values;
  const int device = delta.get_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_seeded_pack_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    auto* kernel = seeded_pack_kernel<scalar_t, acc_t>;
    kernel<<<grid_for_warps(kernel, sb.tiles(), device), kThreads, 0, stream_of(device)>>>(
        x.data_ptr<scalar_t>(), sb, reinterpret_cast<const uint32_t*>(kt.bits.data_ptr<int32_t>()),
        kt.starts.data_ptr<int64_t>(), q_rows ? q_rows->data_ptr<acc_t>() : nullptr,
        inverse_q<acc_t>(static_cast<acc_t>(q)), row_len, values.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return values;
}

at::Tensor keep_count_cuda(const at::Tensor& like, double p, int64_t seed, int64_t offset, int64_t mask_spec) {
  check_p(p);
  check_offset(offset);
  check_mask_spec(mask_spec);
  mask_spec = effective_mask_spec(mask_spec, p);
  const c10::cuda::CUDAGuard guard(like.device());
  const int64_t n = like.numel();
  if (n == 0) return at::zeros({}, like.options().dtype(at::kLong));
  const at::Tensor keep = seeded_keep(like, n, p, seed, offset, mask_spec);
  return tile_counts(like, seeded_blocks(n, p, seed, offset, keep), nullptr).sum();
}

void seeded_scatter_cuda(at::Tensor& out, const at::Tensor& values, double p, int64_t seed,
                         int64_t offset, double alpha, bool accumulate, int64_t mask_spec) {
  TORCH_CHECK(out.is_cuda(), "out must be a CUDA tensor");
  check_values_for(out, values);
  check_p(p);
  check_offset(offset);
  check_mask_spec(mask_spec);
  check_scatter_scalars(alpha);
  mask_spec = effective_mask_spec(mask_spec, p);
  const c10::cuda::CUDAGuard guard(out.device());
  const int64_t n = out.numel();
  const at::Tensor keep = seeded_keep(out, n, p, seed, offset, mask_spec);
  const SeededBlocks sb = seeded_blocks(n, p, seed, offset, keep);
  const KeepTiles kt = keep_tiles(out, sb);
  TORCH_CHECK_VALUE(kt.total == values.numel(), "values has ", values.numel(),
                    " entries but the seeded mask (p=", p, ") keeps ", kt.total, " of ", n);
  if (n == 0) return;
  const at::Tensor v = values.contiguous();
  at::Tensor work = out.is_contiguous() ? out : out.contiguous();
  const int device = out.get_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_seeded_scatter_cuda", [&] {
    auto* kernel = seeded_scatter_kernel<scalar_t>;
    scalar_t* o = work.data_ptr<scalar_t>();
    kernel<<<grid_for_warps(kernel, sb.tiles(), device), kThreads, 0, stream_of(device)>>>(
        o, sb, reinterpret_cast<const uint32_t*>(kt.bits.data_ptr<int32_t>()), kt.starts.data_ptr<int64_t>(),
        v.data_ptr<scalar_t>(), static_cast<acc_of<scalar_t>>(alpha), accumulate,
        vec4_aligned<scalar_t>(o, static_cast<uint64_t>(offset)));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!work.is_same(out)) out.copy_(work);
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CUDA, m) {
  m.impl("seeded_pack", &seeded_pack_cuda);
  m.impl("keep_count", &keep_count_cuda);
  m.impl("seeded_scatter_", &seeded_scatter_cuda);
}

}  // namespace darex::cuda
