// CUDA kernels of the kept-position ops (ops/positions.cpp): one thread per kept entry in a
// grid-stride loop. The positions are checked first (a kernel records the first bad entry, the
// host reads it), so a write never lands outside target and no two threads share an element.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/dare_math.h"
#include "../ops/positions_args.h"
#include "launch.cuh"
#include "storage.cuh"

namespace darex::cuda {
namespace {

__global__ void __launch_bounds__(kThreads) positions_check_kernel(const int64_t* pos, int64_t k, int64_t n,
                                                                   unsigned long long* first_bad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < k; j += stride) {
    const int64_t p = pos[j];
    if (p < 0 || p >= n || (j > 0 && pos[j - 1] >= p)) atomicMin(first_bad, static_cast<unsigned long long>(j));
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) positions_add_kernel(scalar_t* t, const int64_t* pos, const scalar_t* v,
                                                                 scalar_t* saved, int64_t k) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < k; j += stride) {
    const scalar_t old = t[pos[j]];
    saved[j] = old;
    t[pos[j]] = add_scaled(old, v[j], acc_of<scalar_t>(1));
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) positions_put_kernel(scalar_t* t, const int64_t* pos,
                                                                 const scalar_t* saved, int64_t k) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < k; j += stride) {
    t[pos[j]] = saved[j];
  }
}

void check_positions(const at::Tensor& pos, int64_t n) {
  const int64_t k = pos.numel();
  if (k == 0) return;
  const int device = pos.get_device();
  at::Tensor first_bad = at::full({1}, -1, pos.options());  // as unsigned: the maximum
  auto* kernel = positions_check_kernel;
  kernel<<<occupancy_grid(kernel, static_cast<uint64_t>(k), device), kThreads, 0, stream_of(device)>>>(
      pos.data_ptr<int64_t>(), k, n, reinterpret_cast<unsigned long long*>(first_bad.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t bad = first_bad.item<int64_t>();
  TORCH_CHECK_VALUE(bad < 0, "positions must be strictly increasing and inside target (0 <= position < ", n,
                    "): positions[", bad, "] is not");
}

void positions_add_cuda(at::Tensor& target, const at::Tensor& positions, const at::Tensor& values, at::Tensor& saved) {
  TORCH_CHECK(target.is_cuda(), "target must be a CUDA tensor");
  check_positions_args(target, positions, saved, &values);
  const c10::cuda::CUDAGuard guard(target.device());
  const at::Tensor pos = positions.contiguous();
  const at::Tensor v = values.contiguous();
  check_positions(pos, target.numel());
  const int64_t k = pos.numel();
  if (k == 0) return;
  const int device = target.get_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target.scalar_type(), "darex_positions_add_cuda", [&] {
    auto* kernel = positions_add_kernel<scalar_t>;
    kernel<<<occupancy_grid(kernel, static_cast<uint64_t>(k), device), kThreads, 0, stream_of(device)>>>(
        target.data_ptr<scalar_t>(), pos.data_ptr<int64_t>(), v.data_ptr<scalar_t>(), saved.data_ptr<scalar_t>(), k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void positions_put_cuda(at::Tensor& target, const at::Tensor& positions, const at::Tensor& saved) {
  TORCH_CHECK(target.is_cuda(), "target must be a CUDA tensor");
  check_positions_args(target, positions, saved, nullptr);
  const c10::cuda::CUDAGuard guard(target.device());
  const at::Tensor pos = positions.contiguous();
  check_positions(pos, target.numel());
  const int64_t k = pos.numel();
  if (k == 0) return;
  const int device = target.get_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target.scalar_type(), "darex_positions_put_cuda", [&] {
    auto* kernel = positions_put_kernel<scalar_t>;
    kernel<<<occupancy_grid(kernel, static_cast<uint64_t>(k), device), kThreads, 0, stream_of(device)>>>(
        target.data_ptr<scalar_t>(), pos.data_ptr<int64_t>(), saved.data_ptr<scalar_t>(), k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CUDA, m) {
  m.impl("positions_add_", &positions_add_cuda);
  m.impl("positions_put_", &positions_put_cuda);
}

}  // namespace darex::cuda
