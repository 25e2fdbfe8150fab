// CUDA kernels of the CSR storage format over the 2-D view. Pack reuses the bitmask kernels'
// per-byte nonzero bits and counts, then writes column indices and values at scanned
// positions. Scatter checks crow on the host, then every column index on the device (in range,
// strictly increasing within its row; the first bad index is reported) before it writes.
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

std::pair<at::Tensor, at::Tensor> nonzero_bytes_cuda(const at::Tensor& x, int64_t rows, int64_t cols);

namespace {

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) csr_values_kernel(const scalar_t* x, int64_t rows, int64_t cols,
                                                               int64_t bpr, const uint8_t* bm,
                                                               const int64_t* starts, index_t* col,
                                                               scalar_t* values) {
  DAREX_GRID_STRIDE(t, rows * bpr) {
    const int64_t r = t / bpr;
    const int64_t c0 = 8 * (t - r * bpr);
    uint32_t m = bm[t];
    int64_t k = starts[t];
    while (m != 0) {
      const int j = __ffs(m) - 1;
      m &= m - 1;
      col[k] = static_cast<index_t>(c0 + j);
      values[k++] = x[r * cols + c0 + j];
    }
  }
}

// Row of value k: the last r with crow[r] <= k (crow validated: crow[0] = 0 <= k < crow[rows]).
__device__ __forceinline__ int64_t row_of(const int64_t* crow, int64_t rows, int64_t k) {
  int64_t lo = 0, hi = rows - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (crow[mid] <= k) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

template <typename index_t>
__global__ void __launch_bounds__(kThreads) csr_check_kernel(const int64_t* crow, int64_t rows, int64_t cols,
                                                              const index_t* col, int64_t nnz,
                                                              unsigned long long* first_bad) {
  DAREX_GRID_STRIDE(k, nnz) {
    const int64_t r = row_of(crow, rows, k);
    const int64_t c = static_cast<int64_t>(col[k]);
    const bool bad = c < 0 || c >= cols || (k > crow[r] && static_cast<int64_t>(col[k - 1]) >= c);
    if (bad) atomicMin(first_bad, static_cast<unsigned long long>(k));
  }
}

// Runs only after csr_check_kernel found every column in range and strictly increasing within
// its row: each value has its own destination element, so the writes cannot race.
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) csr_scatter_kernel(scalar_t* out, const int64_t* crow, int64_t rows,
                                                                int64_t cols, const index_t* col,
                                                                const scalar_t* values, int64_t nnz,
                                                                acc_of<scalar_t> alpha, bool accumulate) {
  DAREX_GRID_STRIDE(k, nnz) {
    const int64_t r = row_of(crow, rows, k);
    scalar_t* dst = out + r * cols + static_cast<int64_t>(col[k]);
    if (accumulate) *dst = add_scaled(*dst, values[k], alpha);
    else *dst = values[k];
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_pack_cuda(const at::Tensor& dense) {
  TORCH_CHECK(dense.is_cuda(), "dense must be a CUDA tensor");
  check_values_tensor(dense, "dense");
  const c10::cuda::CUDAGuard guard(dense.device());
  const RowView v = row_view(dense);
  const int64_t bpr = packed_row_bytes(v.cols);
  const at::Tensor x = dense.contiguous();
  auto [bm, counts] = nonzero_bytes_cuda(x, v.rows, v.cols);
  auto [starts, total] = exclusive_starts(counts);
  const auto long_opts = dense.options().dtype(at::kLong);
  const at::Tensor row_counts = v.rows * bpr > 0 ? counts.view({v.rows, bpr}).sum(1) : at::zeros({v.rows}, long_opts);
  at::Tensor crow = at::cat({at::zeros({1}, long_opts), at::cumsum(row_counts, 0)});
  at::Tensor col = at::empty({total}, dense.options().dtype(column_dtype(v.cols)));
  at::Tensor values = at::empty({total}, dense.options());
  const int device = dense.get_device();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_csr_pack_cuda", [&] {
      dispatch_column_type(col.scalar_type(), [&](auto tag) {
        using index_t = decltype(tag);
        csr_values_kernel<scalar_t, index_t><<<grid_for_items(csr_values_kernel<scalar_t, index_t>, v.rows * bpr, device), kThreads, 0,
                                               stream_of(device)>>>(
            x.data_ptr<scalar_t>(), v.rows, v.cols, bpr, bm.data_ptr<uint8_t>(), starts.data_ptr<int64_t>(),
            static_cast<index_t*>(col.data_ptr()), values.data_ptr<scalar_t>());
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
    csr_check_kernel<index_t><<<grid_for_items(csr_check_kernel<index_t>, nnz, device), kThreads, 0, stream_of(device)>>>(
        cr.data_ptr<int64_t>(), v.rows, v.cols, static_cast<const index_t*>(ci.data_ptr()), nnz,
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
      csr_scatter_kernel<scalar_t, index_t><<<grid_for_items(csr_scatter_kernel<scalar_t, index_t>, nnz, device), kThreads, 0, stream_of(device)>>>(
          work.data_ptr<scalar_t>(), cr.data_ptr<int64_t>(), v.rows, v.cols,
          static_cast<const index_t*>(ci.data_ptr()), vals.data_ptr<scalar_t>(), nnz,
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
