// CPU kernels of the exact top-k ops: radix select on order-preserving keys (common/radix_key.h),
// 11-bit digits, one histogram pass per digit, then one write pass. No sort, no index tensor,
// no score tensor: keys are computed from the data on the fly in every pass.
//
// Whole tensor (topk_select_tensor.h): histogram passes run in parallel with per-thread
// histograms; the write pass (topk_write.h) runs over fixed chunks, leaving elements whose key
// equals the threshold for a second, ordered pass over only the chunks that hold such elements
// (so the lower index wins ties).
// Per row (topk_select_rows.h): rows run in parallel, each row serially (ties ordered for free).
#include "isa.h"  // first: its GCC 12 workaround must precede the intrinsic headers

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>
#include <type_traits>

#include "../common/dare_math.h"
#include "../common/radix_key.h"
#include "../common/topk_keys.h"
#include "../ops/fresh_output.h"
#include "../ops/prune_args.h"
#include "../ops/topk_args.h"

#if DAREX_X86_INTRINSICS
#include <immintrin.h>
#endif

namespace darex::cpu {
// Keys a compaction of topk_spans.inc may write past the last one it keeps; staging buffers
// leave room for them.
constexpr int64_t kCompactSlack = 16;
}  // namespace darex::cpu

// The whole-tensor passes' element loops, compiled once per instruction set (topk_spans.inc);
// before the select and write headers, which call them.
#define DAREX_ISA_SPANS "topk_spans.inc"
#include "isa.h"

#include "topk_select_rows.h"
#include "topk_select_tensor.h"
#include "topk_write.h"

namespace darex::cpu {
namespace {

using topk::raise_on_nan;
using topk::select_and_write;
using topk::select_parallel;
using topk::Selection;

template <typename scalar_t>
void check_no_nan(const at::Tensor& x) {
  using U = typename ScoreBits<scalar_t>::U;
  const AbsKeys<scalar_t> keys{reinterpret_cast<const U*>(x.data_ptr<scalar_t>())};
  std::atomic<int64_t> nans{0};
  at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t b, int64_t e) {
    int64_t local = 0;
    DAREX_ISA_CALL_RESULT(local, count_nan_span, keys, b, e);
    nans += local;
  });
  raise_on_nan<U>(nans.load());
}

void check_scores(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  check_values_tensor(t, name);
}

at::Tensor topk_mask_cpu(const at::Tensor& scores, int64_t k, bool largest, bool per_row) {
  check_scores(scores, "scores");
  const auto [rows, cols] = slice_shape(scores, per_row);
  check_k(k, cols, "k");
  const at::Tensor x = scores.contiguous();
  at::Tensor mask = fresh_output(scores.sizes(), scores.options().dtype(at::kBool));
  bool* m = mask.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_topk_mask_cpu", [&] {
    using U = typename ScoreBits<scalar_t>::U;
    const U* bits = reinterpret_cast<const U*>(x.data_ptr<scalar_t>());
    const auto run = [&](auto largest_tag) {
      const ScoreKeys<scalar_t, decltype(largest_tag)> keys{bits, largest_tag};
      select_and_write(
          rows, cols, k, per_row, [&](int64_t r) { return keys.row(r, cols); },
          [&](int64_t r) { bool* out = m + r * cols; return [out](int64_t i, bool s) { out[i] = s; }; });
    };
    if (largest) run(std::true_type{}); else run(std::false_type{});
  });
  return mask;
}

at::Tensor topk_threshold_cpu(const at::Tensor& scores, int64_t k, bool largest) {
  check_scores(scores, "scores");
  TORCH_CHECK_VALUE(k >= 1 && k <= scores.numel(), "k must be in [1, ", scores.numel(), "], got ", k);
  const at::Tensor x = scores.contiguous();
  at::Tensor result = at::empty({3}, scores.options().dtype(at::kDouble));
  double* r = result.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_topk_threshold_cpu", [&] {
    using U = typename ScoreBits<scalar_t>::U;
    const U* raw = reinterpret_cast<const U*>(x.data_ptr<scalar_t>());
    const Selection<U> sel = largest ? select_parallel(ScoreKeys<scalar_t, std::true_type>{raw, {}}, x.numel(), k)
                                     : select_parallel(ScoreKeys<scalar_t, std::false_type>{raw, {}}, x.numel(), k);
    const U bits = radix_key_bits<U>(sel.threshold, largest);
    scalar_t value;
    static_assert(sizeof(value) == sizeof(bits));
    std::memcpy(&value, &bits, sizeof(bits));
    r[0] = static_cast<double>(value);
    r[1] = static_cast<double>(sel.beyond);
    r[2] = static_cast<double>(sel.need_eq);
  });
  return result;
}

// Kept entries scaled by 1/q (when q is given; computed, common/convert.h) or left as they are
// (their bits copied), dropped ones set to +0; branch-free selects on the bits.
template <typename scalar_t, bool kScale>
struct PruneWriter {
  using acc_t = acc_of<scalar_t>;
  scalar_t* x;
  acc_t inv;
  void operator()(int64_t i, bool keep) const {
    const scalar_t kept = kScale ? prune_store(x[i], inv, true) : x[i];
    x[i] = from_bits<scalar_t>(keep ? to_bits(kept) : bits_of<scalar_t>(0));
  }
};

// Runs f(make_writer) with a writer factory for row r, specialized on whether q is given.
template <typename scalar_t, typename F>
void with_prune_writer(scalar_t* x, int64_t cols, std::optional<acc_of<scalar_t>> inv, const F& f) {
  if (inv) {
    f([x, cols, v = *inv](int64_t r) { return PruneWriter<scalar_t, true>{x + r * cols, v}; });
  } else {
    f([x, cols](int64_t r) { return PruneWriter<scalar_t, false>{x + r * cols, 0}; });
  }
}

void magnitude_prune_cpu(at::Tensor& delta, int64_t keep, bool per_row, std::optional<double> q) {
  check_scores(delta, "delta");
  const auto [rows, cols] = slice_shape(delta, per_row);
  check_k(keep, cols, "keep");
  at::Tensor work = delta.is_contiguous() ? delta : delta.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_magnitude_prune_cpu", [&] {
    using U = typename ScoreBits<scalar_t>::U;
    const auto inv = inverse_of<acc_of<scalar_t>>(q);
    // A whole-tensor select counts NaN in its first pass and raises before any write; rows
    // are written as they are selected, so a NaN in a later row must be found first.
    if (per_row) check_no_nan<scalar_t>(work);
    scalar_t* x = work.data_ptr<scalar_t>();
    const AbsKeys<scalar_t> keys{reinterpret_cast<const U*>(x)};
    with_prune_writer<scalar_t>(x, cols, inv, [&](const auto& make_writer) {
      select_and_write(rows, cols, keep, per_row, [&](int64_t r) { return keys.row(r, cols); }, make_writer);
    });
  });
  if (!work.is_same(delta)) delta.copy_(work);
}

void wanda_prune_cpu(at::Tensor& delta, const at::Tensor& act_norm, int64_t keep, std::optional<double> q) {
  check_scores(delta, "delta");
  check_wanda_args(delta, act_norm, keep);
  const int64_t rows = delta.size(0), cols = delta.size(1);
  at::Tensor work = delta.is_contiguous() ? delta : delta.contiguous();
  const at::Tensor a = act_norm.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_wanda_prune_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const auto inv = inverse_of<acc_t>(q);
    scalar_t* x = work.data_ptr<scalar_t>();
    const WandaKeys<scalar_t> keys{x, a.data_ptr<acc_t>()};
    // Scores are NaN iff an input is NaN or |x| * a is inf * 0: scan before writing anything.
    std::atomic<int64_t> nans{0};
    at::parallel_for(0, rows, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
      int64_t local = 0;
      for (int64_t r = r0; r < r1; ++r) {
        int64_t in_row = 0;
        DAREX_ISA_CALL_RESULT(in_row, count_nan_span, keys.row(r, cols), 0, cols);
        local += in_row;
      }
      nans += local;
    });
    raise_on_nan<uint32_t>(nans.load());
    with_prune_writer<scalar_t>(x, cols, inv, [&](const auto& make_writer) {
      select_and_write(rows, cols, keep, true, [&](int64_t r) { return keys.row(r, cols); }, make_writer);
    });
  });
  if (!work.is_same(delta)) delta.copy_(work);
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CPU, m) {
  m.impl("topk_mask", &topk_mask_cpu);
  m.impl("topk_threshold", &topk_threshold_cpu);
  m.impl("magnitude_prune_", &magnitude_prune_cpu);
  m.impl("wanda_prune_", &wanda_prune_cpu);
}

}  // namespace darex::cpu
