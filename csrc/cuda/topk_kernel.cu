// CUDA kernels of the exact top-k ops: radix select on order-preserving keys
// (common/radix_key.h, key sources in common/topk_keys.h), 11-bit digits, no sort, no index
// tensor, no score tensor: keys are computed from the data on the fly in every pass.
//
// Whole tensor: topk_select_tensor.cuh finds the threshold key, topk_write.cuh writes.
// Per row: topk_select_rows.cuh, one CUDA block per row.
//
// NaN is refused before anything is written: whole-tensor selection counts it in its first
// histogram pass, per-row selection runs a counting pass first.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstring>
#include <optional>
#include <type_traits>

#include "../common/dare_math.h"
#include "../common/radix_key.h"
#include "../common/topk_keys.h"
#include "../ops/prune_args.h"
#include "../ops/topk_args.h"
#include "topk_common.cuh"
#include "topk_select_rows.cuh"
#include "topk_select_tensor.cuh"
#include "topk_write.cuh"

namespace darex::cuda {
namespace {

using topk::Ctx;
using topk::Cut;
using topk::kNanSpan;
using topk::make_ctx;
using topk::radix_select;
using topk::select_rows;
using topk::select_whole;

// ---- writers: write(i, selected) for every element, exactly once -------------------------

struct MaskWriter {
  bool* out;
  DAREX_HD MaskWriter row(int64_t r, int64_t cols) const { return {out + r * cols}; }
  DAREX_HD bool writes_kept() const { return true; }
  __device__ __forceinline__ void write(int64_t i, bool selected) const { out[i] = selected; }
};

// Kept entries scaled by 1/q (when given; prune_store, as on the CPU) or left untouched, dropped
// ones set to +0. Reads x[i] only for the element it writes, so it is safe on the tensor the
// keys are read from.
template <typename scalar_t>
struct PruneWriter {
  using acc_t = acc_of<scalar_t>;
  scalar_t* x;
  acc_t inv;
  bool scale;
  DAREX_HD PruneWriter row(int64_t r, int64_t cols) const { return {x + r * cols, inv, scale}; }
  DAREX_HD bool writes_kept() const { return scale; }
  __device__ __forceinline__ void write(int64_t i, bool keep) const {
    if (!keep) {
      x[i] = storage_zero<scalar_t>();
    } else if (scale) {
      x[i] = prune_store(x[i], inv, true);
    }
  }
};

// ---- ops --------------------------------------------------------------------------------

void check_scores(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  check_values_tensor(t, name);
}

template <typename scalar_t>
PruneWriter<scalar_t> prune_writer(scalar_t* x, std::optional<acc_of<scalar_t>> inv) {
  return PruneWriter<scalar_t>{x, inv.value_or(acc_of<scalar_t>(1)), inv.has_value()};
}

at::Tensor topk_mask_cuda(const at::Tensor& scores, int64_t k, bool largest, bool per_row) {
  check_scores(scores, "scores");
  const auto [rows, cols] = slice_shape(scores, per_row);
  check_k(k, cols, "k");
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor x = scores.contiguous();
  at::Tensor mask = at::empty(scores.sizes(), scores.options().dtype(at::kBool));
  const int64_t n = x.numel();
  if (n == 0) return mask;
  const Ctx ctx = make_ctx(x);
  const MaskWriter w{mask.data_ptr<bool>()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_topk_mask_cuda", [&] {
    using U = typename ScoreBits<scalar_t>::U;
    const ScoreKeys<scalar_t> keys{reinterpret_cast<const U*>(x.data_ptr<scalar_t>()), largest};
    if (per_row) {
      select_rows(keys, w, rows, cols, k, kNanSpan, ctx);
    } else {
      select_whole(keys, w, n, k, ctx);
    }
  });
  return mask;
}

at::Tensor topk_threshold_cuda(const at::Tensor& scores, int64_t k, bool largest) {
  check_scores(scores, "scores");
  TORCH_CHECK_VALUE(k >= 1 && k <= scores.numel(), "k must be in [1, ", scores.numel(), "], got ", k);
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor x = scores.contiguous();
  const Ctx ctx = make_ctx(x);
  at::Tensor result = at::empty({3}, at::TensorOptions().dtype(at::kDouble));
  double* r = result.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_topk_threshold_cuda", [&] {
    using U = typename ScoreBits<scalar_t>::U;
    const ScoreKeys<scalar_t> keys{reinterpret_cast<const U*>(x.data_ptr<scalar_t>()), largest};
    const Cut<U> cut = radix_select(keys, x.numel(), k, /*exact=*/true, ctx);
    const U bits = radix_key_bits<U>(cut.threshold, largest);
    scalar_t value;
    static_assert(sizeof(value) == sizeof(bits));
    std::memcpy(&value, &bits, sizeof(bits));
    r[0] = static_cast<double>(value);
    r[1] = static_cast<double>(cut.beyond);
    r[2] = static_cast<double>(cut.need_eq);
  });
  return result.to(scores.device());
}

void magnitude_prune_cuda(at::Tensor& delta, int64_t keep, bool per_row, std::optional<double> q) {
  check_scores(delta, "delta");
  const auto [rows, cols] = slice_shape(delta, per_row);
  check_k(keep, cols, "keep");
  const c10::cuda::CUDAGuard guard(delta.device());
  at::Tensor work = delta.is_contiguous() ? delta : delta.contiguous();
  const int64_t n = work.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_magnitude_prune_cuda", [&] {
    using U = typename ScoreBits<scalar_t>::U;
    const auto inv = inverse_of<acc_of<scalar_t>>(q);
    if (n == 0) return;
    const Ctx ctx = make_ctx(work);
    scalar_t* x = work.data_ptr<scalar_t>();
    const AbsKeys<scalar_t> keys{reinterpret_cast<const U*>(x)};
    const PruneWriter<scalar_t> w = prune_writer<scalar_t>(x, inv);
    if (per_row) {
      select_rows(keys, w, rows, cols, keep, kNanSpan, ctx);
    } else {
      select_whole(keys, w, n, keep, ctx);
    }
  });
  if (!work.is_same(delta)) delta.copy_(work);
}

void wanda_prune_cuda(at::Tensor& delta, const at::Tensor& act_norm, int64_t keep, std::optional<double> q) {
  check_scores(delta, "delta");
  check_wanda_args(delta, act_norm, keep);
  const int64_t rows = delta.size(0), cols = delta.size(1);
  const c10::cuda::CUDAGuard guard(delta.device());
  at::Tensor work = delta.is_contiguous() ? delta : delta.contiguous();
  const at::Tensor a = act_norm.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_wanda_prune_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    const auto inv = inverse_of<acc_t>(q);
    if (rows == 0 || cols == 0) return;
    const Ctx ctx = make_ctx(work);
    scalar_t* x = work.data_ptr<scalar_t>();
    const WandaKeys<scalar_t> keys{x, a.data_ptr<acc_t>()};
    select_rows(keys, prune_writer<scalar_t>(x, inv), rows, cols, keep, cols, ctx);
  });
  if (!work.is_same(delta)) delta.copy_(work);
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CUDA, m) {
  m.impl("topk_mask", &topk_mask_cuda);
  m.impl("topk_threshold", &topk_threshold_cuda);
  m.impl("magnitude_prune_", &magnitude_prune_cuda);
  m.impl("wanda_prune_", &wanda_prune_cuda);
}

}  // namespace darex::cuda
