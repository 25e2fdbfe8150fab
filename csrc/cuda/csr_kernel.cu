// CUDA kernels of the CSR storage format over the 2-D view. Pack reuses the bitmask kernels'
// per-tile nonzero bits and counts, then a warp per tile writes column indices and values at
// ballot-ranked positions. Scatter checks crow on the host, then a warp per row checks every
// column index on the device (in range, strictly increasing within its row; the first bad index
// is reported) before a warp per row writes: no search for a value's row.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../ops/storage_args.h"
#include "storage.cuh"

namespace darex::cuda {

std::pair<at::Tensor, at::Tensor> nonzero_tiles_cuda(const at::Tensor& x, int64_t rows, int64_t cols);
at::Tensor row_sums_of_tiles(const at::Tensor& counts, int64_t rows, int64_t tpr);

namespace {

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) csr_values_kernel(const scalar_t* x, int64_t cols, int64_t bpr,
                                                               int64_t tpr, int64_t tiles, const uint8_t* bm,
                                                               const int64_t* starts, index_t* col,
                                                               scalar_t* values) {
  const int lane = lane_id();
  DAREX_WARP_STRIDE(t, tiles) {
    const RowTile tile = row_tile(t, tpr);
    const scalar_t* row = x + tile.row * cols;
    int64_t k = starts[t];
    for (int round = 0; round < kTileRounds; ++round) {
      const int64_t cb = tile.c0 + round * kWarp;  // the same for the whole warp
      if (cb >= cols) break;
      const int64_t c = cb + lane;
      const uint32_t bit = c < cols ? bitmask_bit(bm, bpr, tile.row, c) : 0u;
      const uint32_t word = __ballot_sync(kFullMask, bit != 0);
      if (bit) {
        const int64_t pos = k + __popc(word & lanes_below());
        col[pos] = static_cast<index_t>(c);
        values[pos] = row[c];
      }
      k += __popc(word);
    }
  }
}

// Warp per row; lanes stride over the row's values (crow validated: non-decreasing, in range).
template <typename index_t>
__global__ void __launch_bounds__(kThreads) csr_check_kernel(const int64_t* crow, int64_t rows, int64_t cols,
                                                              const index_t* col,
                                                              unsigned long long* first_bad) {
  DAREX_WARP_STRIDE(r, rows) {
    const int64_t begin = crow[r], end = crow[r + 1];
    for (int64_t k = begin + lane_id(); k < end; k += kWarp) {
      const int64_t c = static_cast<int64_t>(col[k]);
      const bool bad = c < 0 || c >= cols || (k > begin && static_cast<int64_t>(col[k - 1]) >= c);
      if (bad) atomicMin(first_bad, static_cast<unsigned long long>(k));
    }
  }
}

// Runs only after csr_check_kernel found every column in range and strictly increasing within
// its row: each value has its own destination element, so the writes cannot race.
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) csr_scatter_kernel(scalar_t* out, const int64_t* crow, int64_t rows,
                                                                int64_t cols, const index_t* col,
                                                                const scalar_t* values,
                                                                acc_of<scalar_t> alpha, bool accumulate) {
  DAREX_WARP_STRIDE(r, rows) {
    scalar_t* row = out + r * cols;
    const int64_t end = crow[r + 1];
    for (int64_t k = crow[r] + lane_id(); k < end; k += kWarp) {
      scalar_t* dst = row + static_cast<int64_t>(col[k]);
      if (accumulate) *dst = add_scaled(*dst, values[k], alpha);
      else *dst = values[k];
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_pack_cuda(const at::Tensor& dense) {
  TORCH_CHECK(dense.is_cuda(), "dense must be a CUDA tensor");
  check_values_tensor(dense, "dense");
  const c10::cuda::CUDAGuard guard(dense.device());
  const RowView v = row_view(dense);
  const int64_t bpr = packed_row_bytes(v.cols);
  const at::Tensor x = dense.contiguous();
  const int64_t tpr = tiles_per_row(v.cols);
  auto [bm, counts] = nonzero_tiles_cuda(x, v.rows, v.cols);
  auto [starts, total] = exclusive_starts(counts);
  const auto long_opts = dense.options().dtype(at::kLong);
  at::Tensor crow = at::cat({at::zeros({1}, long_opts), at::cumsum(row_sums_of_tiles(counts, v.rows, tpr), 0)});
  at::Tensor col = at::empty({total}, dense.options().dtype(column_dtype(v.cols)));
  at::Tensor values = at::empty({total}, dense.options());
  const int device = dense.get_device();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_csr_pack_cuda", [&] {
      dispatch_column_type(col.scalar_type(), [&](auto tag) {
        using index_t = decltype(tag);
        auto* kernel = csr_values_kernel<scalar_t, index_t>;
        kernel<<<grid_for_warps(kernel, v.rows * tpr, device), kThreads, 0, stream_of(device)>>>(
            x.data_ptr<scalar_t>(), v.cols, bpr, tpr, v.rows * tpr, bm.data_ptr<uint8_t>(),
            starts.data_ptr<int64_t>(), static_cast<index_t*>(col.data_ptr()), values.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {crow, col, values};
}

void csr_scatter_cuda(at::Tensor& out, const at::Tensor& crow, const at::Tensor& col,
                      const at::Tensor& values, double alpha, bool accumulate) {
  TORCH_CHECK(out.is_cuda(), "out must be a CUDA tensor");
  check_csr_layout(out, crow, col, values);
  check_scatter_scalars(alpha);
  const c10::cuda::CUDAGuard guard(out.device());
  const RowView v = row_view(out);
  const at::Tensor cr = crow.contiguous();
  const at::Tensor cr_host = cr.cpu();
  const int64_t nnz = values.numel();
  validate_crow(cr_host.data_ptr<int64_t>(), v.rows, nnz);
  if (nnz == 0) {
    if (!accumulate) out.zero_();
    return;
  }
  const int device = out.get_device();
  const at::Tensor ci = col.contiguous();
  at::Tensor first_bad = at::full({1}, -1, out.options().dtype(at::kLong));  // as unsigned: max
  dispatch_column_type(ci.scalar_type(), [&](auto tag) {
    using index_t = decltype(tag);
    auto* kernel = csr_check_kernel<index_t>;
    kernel<<<grid_for_warps(kernel, v.rows, device), kThreads, 0, stream_of(device)>>>(
        cr.data_ptr<int64_t>(), v.rows, v.cols, static_cast<const index_t*>(ci.data_ptr()),
        reinterpret_cast<unsigned long long*>(first_bad.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const int64_t bad = first_bad.item<int64_t>();
  TORCH_CHECK_VALUE(bad < 0, "col[", bad, "] is out of range [0, ", v.cols,
                    ") or not after the previous column of its row");
  const at::Tensor vals = values.contiguous();
  at::Tensor work = out.is_contiguous() ? out : out.contiguous();
  if (!accumulate) work.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_csr_scatter_cuda", [&] {
    dispatch_column_type(ci.scalar_type(), [&](auto tag) {
      using index_t = decltype(tag);
      auto* kernel = csr_scatter_kernel<scalar_t, index_t>;
      kernel<<<grid_for_warps(kernel, v.rows, device), kThreads, 0, stream_of(device)>>>(
          work.data_ptr<scalar_t>(), cr.data_ptr<int64_t>(), v.rows, v.cols,
          static_cast<const index_t*>(ci.data_ptr()), vals.data_ptr<scalar_t>(),
          static_cast<acc_of<scalar_t>>(alpha), accumulate);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  if (!work.is_same(out)) out.copy_(work);
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CUDA, m) {
  m.impl("csr_pack", &csr_pack_cuda);
  m.impl("csr_scatter_", &csr_scatter_cuda);
}

}  // namespace darex::cuda
