// CUDA kernels of the seeded storage format: 32-element words of the regenerated keep mask,
// counted, scanned, then compacted (pack) or scattered (decode / add). See storage.cuh.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ops/storage_args.h"
#include "storage.cuh"

namespace darex::cuda {
namespace {

constexpr int kWord = 32;

__global__ void __launch_bounds__(kThreads) keep_words_kernel(uint64_t seed, uint64_t offset, int64_t n,
                                                               uint32_t thr, uint32_t* bits,
                                                               int64_t* counts) {
  const int64_t words = (n + kWord - 1) / kWord;
  DAREX_GRID_STRIDE(w, words) {
    const int64_t first = w * kWord;
    const int count = static_cast<int>(n - first < kWord ? n - first : kWord);
    const uint32_t m = keep_word(seed, offset, first, count, thr);
    if (bits != nullptr) bits[w] = m;
    counts[w] = __popc(m);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) seeded_pack_kernel(const scalar_t* x, int64_t n,
                                                                const uint32_t* bits,
                                                                const int64_t* starts,
                                                                const acc_t* q_rows, acc_t inv_scalar,
                                                                int64_t row_len, scalar_t* values) {
  const int64_t words = (n + kWord - 1) / kWord;
  DAREX_GRID_STRIDE(w, words) {
    uint32_t m = bits[w];
    int64_t k = starts[w];
    while (m != 0) {
      const int j = __ffs(m) - 1;
      m &= m - 1;
      const int64_t e = w * kWord + j;
      const acc_t inv = q_rows == nullptr ? inv_scalar : inverse_q<acc_t>(q_rows[e / row_len]);
      values[k++] = prune_store(x[e], inv, true);
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) seeded_scatter_kernel(scalar_t* out, int64_t n,
                                                                   const uint32_t* bits,
                                                                   const int64_t* starts,
                                                                   const scalar_t* values,
                                                                   acc_of<scalar_t> alpha,
                                                                   bool accumulate) {
  const int64_t words = (n + kWord - 1) / kWord;
  DAREX_GRID_STRIDE(w, words) {
    const uint32_t m = bits[w];
    int64_t k = starts[w];
    const int64_t first = w * kWord;
    const int count = static_cast<int>(n - first < kWord ? n - first : kWord);
    for (int j = 0; j < count; ++j) {
      const bool kept = (m >> j) & 1u;
      if (accumulate) {
        if (kept) out[first + j] = add_scaled(out[first + j], values[k++], alpha);
      } else {
        out[first + j] = kept ? values[k++] : storage_zero<scalar_t>();
      }
    }
  }
}

struct KeepWords {
  at::Tensor bits;    // uint32 per word (int32 storage)
  at::Tensor starts;  // int64 exclusive starts
  int64_t total;
};

KeepWords keep_words(const at::Tensor& like, double p, int64_t seed, int64_t offset) {
  const int64_t n = like.numel();
  const int64_t words = (n + kWord - 1) / kWord;
  const int device = like.get_device();
  KeepWords kw;
  kw.bits = at::empty({words}, like.options().dtype(at::kInt));
  at::Tensor counts = at::empty({words}, like.options().dtype(at::kLong));
  if (words > 0) {
    keep_words_kernel<<<grid_for_items(keep_words_kernel, words, device), kThreads, 0, stream_of(device)>>>(
        static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n, drop_threshold(p),
        reinterpret_cast<uint32_t*>(kw.bits.data_ptr<int32_t>()), counts.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  auto [starts, total] = exclusive_starts(counts);
  kw.starts = starts;
  kw.total = total;
  return kw;
}

at::Tensor seeded_pack_cuda(const at::Tensor& delta, double p, int64_t seed, int64_t offset,
                            const std::optional<at::Tensor>& q_rows, double q) {
  TORCH_CHECK(delta.is_cuda(), "delta must be a CUDA tensor");
  const int64_t row_len = check_prune_args(delta, p, offset, q_rows, q);
  const c10::cuda::CUDAGuard guard(delta.device());
  const int64_t n = delta.numel();
  if (n == 0) return at::empty({0}, delta.options());
  const at::Tensor x = delta.contiguous();
  const KeepWords kw = keep_words(x, p, seed, offset);
  at::Tensor values = at::empty({kw.total}, delta.options());
  const int device = delta.get_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_seeded_pack_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    seeded_pack_kernel<scalar_t, acc_t><<<grid_for_items(seeded_pack_kernel<scalar_t, acc_t>, (n + kWord - 1) / kWord, device), kThreads, 0,
                                          stream_of(device)>>>(
        x.data_ptr<scalar_t>(), n, reinterpret_cast<const uint32_t*>(kw.bits.data_ptr<int32_t>()),
        kw.starts.data_ptr<int64_t>(), q_rows ? q_rows->data_ptr<acc_t>() : nullptr,
        inverse_q<acc_t>(static_cast<acc_t>(q)), row_len > 0 ? row_len : 1, values.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return values;
}

at::Tensor keep_count_cuda(const at::Tensor& like, double p, int64_t seed, int64_t offset) {
  check_p(p);
  check_offset(offset);
  const c10::cuda::CUDAGuard guard(like.device());
  const int64_t n = like.numel();
  const int64_t words = (n + kWord - 1) / kWord;
  if (words == 0) return at::zeros({}, like.options().dtype(at::kLong));
  const int device = like.get_device();
  at::Tensor counts = at::empty({words}, like.options().dtype(at::kLong));
  keep_words_kernel<<<grid_for_items(keep_words_kernel, words, device), kThreads, 0, stream_of(device)>>>(
      static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n, drop_threshold(p), nullptr,
      counts.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return counts.sum();
}

void seeded_scatter_cuda(at::Tensor& out, const at::Tensor& values, double p, int64_t seed,
                         int64_t offset, double alpha, bool accumulate) {
  TORCH_CHECK(out.is_cuda(), "out must be a CUDA tensor");
  check_values_for(out, values);
  check_p(p);
  check_offset(offset);
  check_scatter_scalars(alpha);
  const c10::cuda::CUDAGuard guard(out.device());
  const int64_t n = out.numel();
  const KeepWords kw = keep_words(out, p, seed, offset);
  TORCH_CHECK_VALUE(kw.total == values.numel(), "values has ", values.numel(),
                    " entries but the seeded mask (p=", p, ") keeps ", kw.total, " of ", n);
  if (n == 0) return;
  const at::Tensor v = values.contiguous();
  at::Tensor work = out.is_contiguous() ? out : out.contiguous();
  const int device = out.get_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_seeded_scatter_cuda", [&] {
    seeded_scatter_kernel<scalar_t><<<grid_for_items(seeded_scatter_kernel<scalar_t>, (n + kWord - 1) / kWord, device), kThreads, 0,
                                      stream_of(device)>>>(
        work.data_ptr<scalar_t>(), n, reinterpret_cast<const uint32_t*>(kw.bits.data_ptr<int32_t>()),
        kw.starts.data_ptr<int64_t>(), v.data_ptr<scalar_t>(), static_cast<acc_of<scalar_t>>(alpha),
        accumulate);
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
