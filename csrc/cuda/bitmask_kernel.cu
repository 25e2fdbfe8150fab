// CUDA kernels of the bitmask storage format (compressed-tensors' sparse-bitmask layout over the
// 2-D view). A warp owns a tile of 1024 columns of one row, one column per lane per round: a
// ballot gives the round's 32 bits (4 bitmask bytes), and a kept element's rank in the ballot
// places its value. Pack counts per tile, scans, then writes values; scatter counts the bitmask's
// bits per tile, checks rows, padding and the value count on the device with one host
// synchronization, then writes. See storage.cuh.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/any.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../ops/storage_args.h"
#include "storage.cuh"

namespace darex::cuda {
namespace {

// Bitmask bytes and per-tile counts of the nonzeros of x ([rows, cols], contiguous).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) nonzero_tiles_kernel(const scalar_t* x, int64_t cols, int64_t bpr,
                                                                  int64_t tpr, int64_t tiles, uint8_t* bm,
                                                                  int64_t* counts) {
  using acc_t = acc_of<scalar_t>;
  const int lane = lane_id();
  DAREX_WARP_STRIDE(t, tiles) {
    const RowTile tile = row_tile(t, tpr);
    const scalar_t* row = x + tile.row * cols;
    uint32_t total = 0;
    for (int round = 0; round < kTileRounds; ++round) {
      const int64_t cb = tile.c0 + round * kWarp;  // the same for the whole warp
      if (cb >= cols) break;
      const int64_t c = cb + lane;
      // NaN counts as nonzero, -0.0 as zero: the CPU kernel's rule.
      const bool nz = c < cols && static_cast<acc_t>(row[c]) != acc_t(0);
      const uint32_t word = __ballot_sync(kFullMask, nz);
      total += __popc(word);
      const int64_t byte = (cb >> 3) + lane;  // cb is a multiple of 32: 4 whole bytes
      if (lane < 4 && byte < bpr) bm[tile.row * bpr + byte] = static_cast<uint8_t>(word >> (8 * lane));
    }
    if (lane == 0) counts[t] = total;
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) bitmask_values_kernel(const scalar_t* x, int64_t cols, int64_t bpr,
                                                                   int64_t tpr, int64_t tiles, const uint8_t* bm,
                                                                   const int64_t* starts, scalar_t* values) {
  const int lane = lane_id();
  DAREX_WARP_STRIDE(t, tiles) {
    const RowTile tile = row_tile(t, tpr);
    const scalar_t* row = x + tile.row * cols;
    int64_t k = starts[t];
    for (int round = 0; round < kTileRounds; ++round) {
      const int64_t cb = tile.c0 + round * kWarp;
      if (cb >= cols) break;
      const int64_t c = cb + lane;
      const uint32_t bit = c < cols ? bitmask_bit(bm, bpr, tile.row, c) : 0u;
      const uint32_t word = __ballot_sync(kFullMask, bit != 0);
      if (bit) values[k + __popc(word & lanes_below())] = row[c];
      k += __popc(word);
    }
  }
}

// Per-tile counts of the set bits of a caller's bitmask; dirty = some row's padding bits are set.
__global__ void __launch_bounds__(kThreads) bitmask_tile_counts_kernel(const uint8_t* bm, int64_t cols, int64_t bpr,
                                                                        int64_t tpr, int64_t tiles, uint32_t pad,
                                                                        int64_t* counts, int* dirty) {
  const int lane = lane_id();
  DAREX_WARP_STRIDE(t, tiles) {
    const RowTile tile = row_tile(t, tpr);
    uint32_t total = 0;
    for (int round = 0; round < kTileRounds; ++round) {
      const int64_t cb = tile.c0 + round * kWarp;
      if (cb >= cols) break;
      const int64_t c = cb + lane;
      total += __popc(__ballot_sync(kFullMask, c < cols && bitmask_bit(bm, bpr, tile.row, c)));
    }
    if (lane == 0) {
      counts[t] = total;
      const bool last_tile = tile.c0 + kTileCols >= cols;
      if (last_tile && (bm[tile.row * bpr + bpr - 1] & pad) != 0) *dirty = 1;  // all writers write 1
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) bitmask_scatter_kernel(scalar_t* out, int64_t cols, int64_t bpr,
                                                                    int64_t tpr, int64_t tiles, const uint8_t* bm,
                                                                    const int64_t* starts, const scalar_t* values,
                                                                    acc_of<scalar_t> alpha, bool accumulate) {
  const int lane = lane_id();
  DAREX_WARP_STRIDE(t, tiles) {
    const RowTile tile = row_tile(t, tpr);
    scalar_t* row = out + tile.row * cols;
    int64_t k = starts[t];
    for (int round = 0; round < kTileRounds; ++round) {
      const int64_t cb = tile.c0 + round * kWarp;
      if (cb >= cols) break;
      const int64_t c = cb + lane;
      const bool inside = c < cols;
      const uint32_t bit = inside ? bitmask_bit(bm, bpr, tile.row, c) : 0u;
      const uint32_t word = __ballot_sync(kFullMask, bit != 0);
      const int64_t pos = k + __popc(word & lanes_below());
      if (accumulate) {
        if (bit) row[c] = add_scaled(row[c], values[pos], alpha);
      } else if (inside) {
        row[c] = bit ? values[pos] : storage_zero<scalar_t>();
      }
      k += __popc(word);
    }
  }
}

}  // namespace

// Shared with csr_kernel.cu: the [rows, bpr] bitmask of x's nonzeros and its per-tile counts
// (tiles of kTileCols columns, tiles_per_row(cols) per row).
std::pair<at::Tensor, at::Tensor> nonzero_tiles_cuda(const at::Tensor& x, int64_t rows, int64_t cols) {
  const int64_t bpr = packed_row_bytes(cols);
  const int64_t tpr = tiles_per_row(cols);
  at::Tensor bm = at::empty({rows, bpr}, x.options().dtype(at::kByte));
  at::Tensor counts = at::empty({rows * tpr}, x.options().dtype(at::kLong));
  if (rows * tpr == 0) return {bm, counts};
  const int device = x.get_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_nonzero_tiles_cuda", [&] {
    auto* kernel = nonzero_tiles_kernel<scalar_t>;
    kernel<<<grid_for_warps(kernel, rows * tpr, device), kThreads, 0, stream_of(device)>>>(
        x.data_ptr<scalar_t>(), cols, bpr, tpr, rows * tpr, bm.data_ptr<uint8_t>(), counts.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {bm, counts};
}

// Per-row sums of per-tile counts ([rows * tpr] -> [rows]).
at::Tensor row_sums_of_tiles(const at::Tensor& counts, int64_t rows, int64_t tpr) {
  return tpr > 0 && rows > 0 ? counts.view({rows, tpr}).sum(1) : at::zeros({rows}, counts.options());
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> bitmask_pack_cuda(const at::Tensor& dense) {
  TORCH_CHECK(dense.is_cuda(), "dense must be a CUDA tensor");
  check_values_tensor(dense, "dense");
  const c10::cuda::CUDAGuard guard(dense.device());
  const RowView v = row_view(dense);
  const int64_t bpr = packed_row_bytes(v.cols);
  const int64_t tpr = tiles_per_row(v.cols);
  const at::Tensor x = dense.contiguous();
  auto [bm, counts] = nonzero_tiles_cuda(x, v.rows, v.cols);
  auto [starts, total] = exclusive_starts(counts);
  at::Tensor values = at::empty({total}, dense.options());
  const int device = dense.get_device();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_bitmask_pack_cuda", [&] {
      auto* kernel = bitmask_values_kernel<scalar_t>;
      kernel<<<grid_for_warps(kernel, v.rows * tpr, device), kThreads, 0, stream_of(device)>>>(
          x.data_ptr<scalar_t>(), v.cols, bpr, tpr, v.rows * tpr, bm.data_ptr<uint8_t>(),
          starts.data_ptr<int64_t>(), values.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  // Row r's first value: the start of its first tile.
  at::Tensor row_offsets = tpr > 0 && v.rows > 0 ? starts.view({v.rows, tpr}).select(1, 0).contiguous()
                                                 : at::zeros({v.rows}, dense.options().dtype(at::kLong));
  return {values, bm, row_offsets};
}

void bitmask_scatter_cuda(at::Tensor& out, const at::Tensor& values, const at::Tensor& bitmask,
                          const at::Tensor& row_offsets, double alpha, bool accumulate) {
  TORCH_CHECK(out.is_cuda(), "out must be a CUDA tensor");
  check_bitmask_layout(out, values, bitmask, row_offsets);
  check_scatter_scalars(alpha);
  const c10::cuda::CUDAGuard guard(out.device());
  const RowView v = row_view(out);
  const int64_t bpr = packed_row_bytes(v.cols);
  const int64_t tpr = tiles_per_row(v.cols);
  const int64_t tiles = v.rows * tpr;
  const int device = out.get_device();
  const at::Tensor bm = bitmask.contiguous();
  const auto long_opts = out.options().dtype(at::kLong);
  at::Tensor counts = at::empty({tiles}, long_opts);
  at::Tensor dirty = at::zeros({1}, out.options().dtype(at::kInt));
  if (tiles > 0) {
    bitmask_tile_counts_kernel<<<grid_for_warps(bitmask_tile_counts_kernel, tiles, device), kThreads, 0,
                                 stream_of(device)>>>(bm.data_ptr<uint8_t>(), v.cols, bpr, tpr, tiles,
                                                      padding_bits(v.cols), counts.data_ptr<int64_t>(),
                                                      dirty.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // Every check on the device, one synchronization: [padding dirty, rows disagree, set bits].
  const at::Tensor row_counts = row_sums_of_tiles(counts, v.rows, tpr);
  const at::Tensor ro = row_offsets.contiguous();
  const at::Tensor row_starts = exclusive_starts_on_device(row_counts);
  const at::Tensor status = at::stack({dirty.select(0, 0).to(at::kLong), at::ne(ro, row_starts).any().to(at::kLong),
                                       row_counts.sum()})
                                .cpu();
  const int64_t* s = status.data_ptr<int64_t>();
  if (s[0] != 0 || s[1] != 0 || s[2] != values.numel()) {
    // The error path only: the host check names the first bad row, as on the CPU.
    const at::Tensor rc = row_counts.cpu(), roh = ro.cpu();
    validate_bitmask_counts(roh.data_ptr<int64_t>(), rc.data_ptr<int64_t>(), v.rows, values.numel(), s[0] != 0);
    TORCH_CHECK(false, "bitmask_scatter_: the device found the layout inconsistent but the host did not");
  }
  if (out.numel() == 0 || tiles == 0) return;
  // Value positions come from the bitmask's own counts; the checks above proved they agree with
  // row_offsets and end at values.numel(), so every read of `values` is in bounds.
  const at::Tensor starts = exclusive_starts_on_device(counts);
  const at::Tensor vals = values.contiguous();
  at::Tensor work = out.is_contiguous() ? out : out.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_bitmask_scatter_cuda", [&] {
    auto* kernel = bitmask_scatter_kernel<scalar_t>;
    kernel<<<grid_for_warps(kernel, tiles, device), kThreads, 0, stream_of(device)>>>(
        work.data_ptr<scalar_t>(), v.cols, bpr, tpr, tiles, bm.data_ptr<uint8_t>(), starts.data_ptr<int64_t>(),
        vals.data_ptr<scalar_t>(), static_cast<acc_of<scalar_t>>(alpha), accumulate);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!work.is_same(out)) out.copy_(work);
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CUDA, m) {
  m.impl("bitmask_pack", &bitmask_pack_cuda);
  m.impl("bitmask_scatter_", &bitmask_scatter_cuda);
}

}  // namespace darex::cuda
