// CUDA kernels of the bitmask storage format (compressed-tensors' sparse-bitmask layout over the
// 2-D view). One thread per bitmask byte (8 columns of one row): pack writes the byte and its
// count, a scan places each byte's values; scatter checks every row's popcount against
// row_offsets and the padding bits on the host before its single write kernel runs.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../ops/storage_args.h"
#include "storage.cuh"

namespace darex::cuda {
namespace {

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) nonzero_bytes_kernel(const scalar_t* x, int64_t rows,
                                                                  int64_t cols, int64_t bpr,
                                                                  uint8_t* bm, int64_t* counts) {
  using acc_t = acc_of<scalar_t>;
  DAREX_GRID_STRIDE(t, rows * bpr) {
    const int64_t r = t / bpr;
    const int64_t c0 = 8 * (t - r * bpr);
    const int cnt = static_cast<int>(cols - c0 < 8 ? cols - c0 : 8);
    const scalar_t* row = x + r * cols + c0;
    uint32_t m = 0;
    for (int j = 0; j < cnt; ++j) m |= static_cast<uint32_t>(static_cast<acc_t>(row[j]) != acc_t(0)) << j;
    bm[t] = static_cast<uint8_t>(m);
    counts[t] = __popc(m);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) bitmask_values_kernel(const scalar_t* x, int64_t rows,
                                                                   int64_t cols, int64_t bpr,
                                                                   const uint8_t* bm,
                                                                   const int64_t* starts,
                                                                   scalar_t* values) {
  DAREX_GRID_STRIDE(t, rows * bpr) {
    const int64_t r = t / bpr;
    const int64_t c0 = 8 * (t - r * bpr);
    uint32_t m = bm[t];
    int64_t k = starts[t];
    while (m != 0) {
      const int j = __ffs(m) - 1;
      m &= m - 1;
      values[k++] = x[r * cols + c0 + j];
    }
  }
}

__global__ void __launch_bounds__(kThreads) byte_counts_kernel(const uint8_t* bm, int64_t bytes,
                                                                int64_t bpr, uint32_t pad,
                                                                int64_t* counts, int* dirty) {
  DAREX_GRID_STRIDE(t, bytes) {
    const uint32_t v = bm[t];
    if ((t % bpr) == bpr - 1 && (v & pad) != 0) *dirty = 1;  // every writer writes 1: benign
    counts[t] = __popc(v);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) bitmask_scatter_kernel(scalar_t* out, int64_t rows,
                                                                    int64_t cols, int64_t bpr,
                                                                    const uint8_t* bm,
                                                                    const int64_t* starts,
                                                                    const scalar_t* values,
                                                                    acc_of<scalar_t> alpha,
                                                                    bool accumulate) {
  DAREX_GRID_STRIDE(t, rows * bpr) {
    const int64_t r = t / bpr;
    const int64_t c0 = 8 * (t - r * bpr);
    const int cnt = static_cast<int>(cols - c0 < 8 ? cols - c0 : 8);
    const uint32_t m = bm[t];
    int64_t k = starts[t];
    scalar_t* dst = out + r * cols + c0;
    for (int j = 0; j < cnt; ++j) {
      const bool kept = (m >> j) & 1u;
      if (accumulate) {
        if (kept) dst[j] = add_scaled(dst[j], values[k++], alpha);
      } else {
        dst[j] = kept ? values[k++] : storage_zero<scalar_t>();
      }
    }
  }
}

}  // namespace

// Shared with csr_kernel.cu: bits and counts of the nonzeros of each 8-column byte.
std::pair<at::Tensor, at::Tensor> nonzero_bytes_cuda(const at::Tensor& x, int64_t rows, int64_t cols) {
  const int64_t bpr = packed_row_bytes(cols);
  at::Tensor bm = at::empty({rows, bpr}, x.options().dtype(at::kByte));
  at::Tensor counts = at::empty({rows * bpr}, x.options().dtype(at::kLong));
  if (rows * bpr == 0) return {bm, counts};
  const int device = x.get_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_nonzero_bytes_cuda", [&] {
    nonzero_bytes_kernel<scalar_t><<<grid_for_items(nonzero_bytes_kernel<scalar_t>, rows * bpr, device), kThreads, 0, stream_of(device)>>>(
        x.data_ptr<scalar_t>(), rows, cols, bpr, bm.data_ptr<uint8_t>(), counts.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {bm, counts};
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> bitmask_pack_cuda(const at::Tensor& dense) {
  TORCH_CHECK(dense.is_cuda(), "dense must be a CUDA tensor");
  check_values_tensor(dense, "dense");
  const c10::cuda::CUDAGuard guard(dense.device());
  const RowView v = row_view(dense);
  const int64_t bpr = packed_row_bytes(v.cols);
  const at::Tensor x = dense.contiguous();
  auto [bm, counts] = nonzero_bytes_cuda(x, v.rows, v.cols);
  auto [starts, total] = exclusive_starts(counts);
  at::Tensor values = at::empty({total}, dense.options());
  const int device = dense.get_device();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_bitmask_pack_cuda", [&] {
      bitmask_values_kernel<scalar_t><<<grid_for_items(bitmask_values_kernel<scalar_t>, v.rows * bpr, device), kThreads, 0, stream_of(device)>>>(
          x.data_ptr<scalar_t>(), v.rows, v.cols, bpr, bm.data_ptr<uint8_t>(), starts.data_ptr<int64_t>(),
          values.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  at::Tensor row_offsets = bpr > 0 && v.rows > 0 ? starts.view({v.rows, bpr}).select(1, 0).contiguous()
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
  const int64_t bytes = v.rows * bpr;
  const int device = out.get_device();
  const at::Tensor bm = bitmask.contiguous();
  at::Tensor counts = at::empty({bytes}, out.options().dtype(at::kLong));
  at::Tensor dirty = at::zeros({1}, out.options().dtype(at::kInt));
  if (bytes > 0) {
    byte_counts_kernel<<<grid_for_items(byte_counts_kernel, bytes, device), kThreads, 0, stream_of(device)>>>(
        bm.data_ptr<uint8_t>(), bytes, bpr, padding_bits(v.cols), counts.data_ptr<int64_t>(),
        dirty.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // Row checks on the host: rows * 16 bytes cross the bus, the bitmask itself does not.
  const at::Tensor row_counts = (bytes > 0 ? counts.view({v.rows, bpr}).sum(1)
                                           : at::zeros({v.rows}, counts.options())).cpu();
  const at::Tensor ro = row_offsets.contiguous().cpu();
  validate_bitmask_counts(ro.data_ptr<int64_t>(), row_counts.data_ptr<int64_t>(), v.rows,
                          values.numel(), dirty.cpu().data_ptr<int>()[0] != 0);
  if (out.numel() == 0 || bytes == 0) return;
  // Value positions come from the bitmask's own byte counts; the checks above proved they agree
  // with row_offsets and end at values.numel(), so every read of `values` is in bounds.
  auto [starts, total] = exclusive_starts(counts);
  (void)total;
  const at::Tensor vals = values.contiguous();
  at::Tensor work = out.is_contiguous() ? out : out.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_bitmask_scatter_cuda", [&] {
    bitmask_scatter_kernel<scalar_t><<<grid_for_items(bitmask_scatter_kernel<scalar_t>, bytes, device), kThreads, 0, stream_of(device)>>>(
        work.data_ptr<scalar_t>(), v.rows, v.cols, bpr, bm.data_ptr<uint8_t>(), starts.data_ptr<int64_t>(),
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
