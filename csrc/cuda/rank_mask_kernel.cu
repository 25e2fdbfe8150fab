// CUDA kernel of the magnitude-rank mask: ATen's stable segmented sort ranks each row's |x|
// (equal |x| by column, as the CPU radix sort does), then one grid-stride pass over the sorted
// positions tests each element's mask word against the threshold of its rank (common/rank_mask.h).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "../common/philox.h"
#include "../common/rank_mask.h"
#include "../ops/rank_mask_args.h"
#include "launch.cuh"

namespace darex::cuda {
namespace {

// Position t of the sorted [rows, cols] order: rank t % cols of row t / cols, element order[t].
__global__ void __launch_bounds__(kThreads) rank_mask_kernel(const int64_t* order, int64_t rows, int64_t cols,
                                                             double p_lo, double p_hi, uint64_t seed,
                                                             uint64_t offset, bool* mask) {
  const int64_t n = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < n; t += stride) {
    const int64_t r = t / cols;
    const int64_t rank = t - r * cols;
    const int64_t i = r * cols + order[t];
    const uint32_t u = philox_word(seed, offset + static_cast<uint64_t>(i));
    mask[i] = is_kept(u, rank_drop_threshold(p_lo, p_hi, rank, cols));
  }
}

at::Tensor magnitude_rank_mask_cuda(const at::Tensor& delta, double p_lo, double p_hi, int64_t seed,
                                    int64_t offset) {
  TORCH_CHECK(delta.is_cuda(), "delta must be a CUDA tensor");
  const auto [rows, cols] = check_rank_mask_args(delta, p_lo, p_hi, offset);
  const c10::cuda::CUDAGuard guard(delta.device());
  at::Tensor mask = at::empty(delta.sizes(), delta.options().dtype(at::kBool));
  const int64_t n = delta.numel();
  if (n == 0) return mask;
  const at::Tensor magnitudes = at::abs(delta.reshape({rows, cols}));  // -0.0 -> +0.0
  raise_on_rank_nan(at::isnan(magnitudes).sum().item<int64_t>());
  const at::Tensor order = std::get<1>(at::sort(magnitudes, /*stable=*/true, /*dim=*/1, /*descending=*/false));
  const int device = delta.get_device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  auto* kernel = rank_mask_kernel;
  kernel<<<occupancy_grid(kernel, static_cast<uint64_t>(n), device), kThreads, 0, stream>>>(
      order.data_ptr<int64_t>(), rows, cols, p_lo, p_hi, static_cast<uint64_t>(seed),
      static_cast<uint64_t>(offset), mask.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CUDA, m) { m.impl("magnitude_rank_mask", &magnitude_rank_mask_cuda); }

}  // namespace darex::cuda
