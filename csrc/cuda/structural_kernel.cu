// CUDA kernel of structural DARE: the slice flags come from the keep_mask op (a vector as long
// as the slice count), then a grid-stride pass maps each element to its slice. Groups whose
// elements are all dropped are written without being read. Values go through prune_store
// (common/dare_math.h), as on the CPU.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/dare_math.h"
#include "../ops/structural_args.h"
#include "launch.cuh"

namespace darex::cuda {
namespace {

// One thread per group of 4 consecutive elements: the element -> slice map costs two 64-bit
// divisions per group (not per element), and a full aligned group moves as one vector access.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) structural_kernel(scalar_t* x, int64_t n, int64_t inner,
                                                               int64_t slices, const bool* keep,
                                                               acc_t inv, bool vec) {
  const int64_t groups = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    const int64_t i0 = 4 * g;
    const int64_t run = i0 / inner;  // run = outer index * slices + slice
    int64_t k = i0 - run * inner;    // position inside the run
    int64_t j = run % slices;
    bool kept[4];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      kept[w] = keep[j];
      if (++k == inner) {
        k = 0;
        if (++j == slices) j = 0;
      }
    }
    const bool any = kept[0] | kept[1] | kept[2] | kept[3];
    if (vec && i0 + 4 <= n) {
      Vec4<scalar_t> v;
      if (any) {
        v = *reinterpret_cast<const Vec4<scalar_t>*>(x + i0);
#pragma unroll
        for (int w = 0; w < 4; ++w) v.v[w] = prune_store(v.v[w], inv, kept[w]);
      } else {
#pragma unroll
        for (int w = 0; w < 4; ++w) v.v[w] = storage_zero<scalar_t>();
      }
      *reinterpret_cast<Vec4<scalar_t>*>(x + i0) = v;
      continue;
    }
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t i = i0 + w;
      if (i >= n) break;
      x[i] = kept[w] ? prune_store(x[i], inv, true) : storage_zero<scalar_t>();
    }
  }
}

void structural_prune_cuda(at::Tensor& delta, double p, int64_t dim, int64_t seed, int64_t offset,
                           double q, int64_t mask_spec) {
  TORCH_CHECK(delta.is_cuda(), "delta must be a CUDA tensor");
  const SliceShape s = check_structural_args(delta, p, dim, offset, q, mask_spec);
  mask_spec = effective_mask_spec(mask_spec, p);
  const int64_t n = delta.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(delta.device());
  const at::Tensor flags = slice_keep_flags(delta, s.slices, p, seed, offset, mask_spec);
  at::Tensor work = delta.is_contiguous() ? delta : delta.contiguous();
  const int device = delta.get_device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_structural_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    scalar_t* x = work.data_ptr<scalar_t>();
    auto* kernel = structural_kernel<scalar_t, acc_t>;
    kernel<<<occupancy_grid(kernel, static_cast<uint64_t>((n + 3) / 4), device), kThreads, 0, stream>>>(
        x, n, s.inner, s.slices, flags.data_ptr<bool>(), inverse_q<acc_t>(static_cast<acc_t>(q)),
        vec4_aligned<scalar_t>(x, 0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!work.is_same(delta)) delta.copy_(work);
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CUDA, m) { m.impl("structural_prune_", &structural_prune_cuda); }

}  // namespace darex::cuda
