// CUDA kernel of row_moments (schema and semantics: ops/row_moments.cpp). One block per row
// (grid-stride over rows): each thread accumulates a strided part of the row in float64, then
// two cub block reductions. c = delta * x lives in registers only. The summation order is
// fixed by the launch shape, so results are deterministic run to run (they differ from the CPU
// kernel's only by float64 rounding).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <optional>
#include <tuple>

#include "../common/dare_math.h"
#include "../ops/row_moments_args.h"
#include "launch.cuh"

namespace darex::cuda {
namespace {

template <typename scalar_t>
__device__ __forceinline__ double to_double(scalar_t v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
__device__ __forceinline__ double to_double<double>(double v) {
  return v;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    row_moments_kernel(const scalar_t* __restrict__ d, const double* __restrict__ x,
                       const double* __restrict__ bias, int64_t rows, int64_t cols,
                       double* __restrict__ s_out, double* __restrict__ q_out) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const scalar_t* row = d + r * cols;
    double s = 0.0, q = 0.0;
    for (int64_t j = threadIdx.x; j < cols; j += kThreads) {
      const double c = acc_mul(to_double(row[j]), x[j]);
      s = acc_add(s, c);
      q = acc_add(q, acc_mul(c, c));
    }
    const double s_sum = Reduce(temp).Sum(s);
    __syncthreads();  // temp is reused by the second reduction
    const double q_sum = Reduce(temp).Sum(q);
    if (threadIdx.x == 0) {
      const double b = bias ? bias[r] : 0.0;  // the bias delta is one more column with input 1
      s_out[r] = acc_add(s_sum, b);
      q_out[r] = acc_add(q_sum, acc_mul(b, b));
    }
    __syncthreads();  // temp is reused by the next row
  }
}

std::tuple<at::Tensor, at::Tensor> row_moments_cuda(const at::Tensor& delta, const at::Tensor& x,
                                                    const std::optional<at::Tensor>& bias) {
  check_row_moments_args(delta, x, bias);
  const c10::cuda::CUDAGuard guard(delta.device());
  const int64_t rows = delta.size(0), cols = delta.size(1);
  const auto out_opts = delta.options().dtype(at::kDouble);
  at::Tensor s = at::empty({rows}, out_opts), q = at::empty({rows}, out_opts);
  if (rows == 0) return {s, q};
  const at::Tensor d = delta.contiguous();
  const at::Tensor xc = x.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  const int device = delta.get_device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "darex_row_moments_cuda", [&] {
    auto* kernel = row_moments_kernel<scalar_t>;
    const int grid = static_cast<int>(std::min<int64_t>(rows, occupancy_cap(kernel, device)));
    kernel<<<grid, kThreads, 0, stream>>>(
        d.data_ptr<scalar_t>(), xc.data_ptr<double>(), bc.defined() ? bc.data_ptr<double>() : nullptr, rows,
        cols, s.data_ptr<double>(), q.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {s, q};
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CUDA, m) {
  m.impl("row_moments", &row_moments_cuda);
}

}  // namespace darex::cuda
