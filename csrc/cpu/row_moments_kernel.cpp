// CPU kernel of row_moments (schema and semantics: ops/row_moments.cpp). Rows run in parallel,
// each row in one thread through a lane-split float64 loop (row_moments_spans.inc) compiled for
// AVX-512, AVX2 and the baseline and picked at run time like the prune kernels. c = delta * x is
// formed in registers only.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>

#include "../ops/row_moments_args.h"
#include "philox_fill.h"

namespace darex::cpu {

namespace moments_base {
#include "row_moments_spans.inc"
}  // namespace moments_base

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
namespace moments_avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include "row_moments_spans.inc"
#pragma GCC pop_options
}  // namespace moments_avx2
namespace moments_avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")
#include "row_moments_spans.inc"
#pragma GCC pop_options
}  // namespace moments_avx512
#endif

namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per parallel task, at least

template <typename scalar_t>
void moments_of_row(const scalar_t* d, const double* x, int64_t n, double* s, double* q) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  switch (active_isa()) {
    case Isa::kAvx512: return moments_avx512::row_moments_span(d, x, n, s, q);
    case Isa::kAvx2: return moments_avx2::row_moments_span(d, x, n, s, q);
    default: break;
  }
#endif
  moments_base::row_moments_span(d, x, n, s, q);
}

std::tuple<at::Tensor, at::Tensor> row_moments_cpu(const at::Tensor& delta, const at::Tensor& x,
                                                   const std::optional<at::Tensor>& bias) {
  check_row_moments_args(delta, x, bias);
  const int64_t rows = delta.size(0), cols = delta.size(1);
  const auto out_opts = delta.options().dtype(at::kDouble);
  at::Tensor s = at::empty({rows}, out_opts), q = at::empty({rows}, out_opts);
  if (rows == 0) return {s, q};
  const at::Tensor d = delta.contiguous();
  const at::Tensor xc = x.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  const double* xp = xc.data_ptr<double>();
  const double* bp = bc.defined() ? bc.data_ptr<double>() : nullptr;
  double* sp = s.data_ptr<double>();
  double* qp = q.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "darex_row_moments_cpu", [&] {
    const scalar_t* dp = d.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1));
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        moments_of_row(dp + r * cols, xp, cols, sp + r, qp + r);
        if (bp) {  // the bias delta is one more column whose input is 1
          sp[r] += bp[r];
          qp[r] += bp[r] * bp[r];
        }
      }
    });
  });
  return {s, q};
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CPU, m) {
  m.impl("row_moments", &row_moments_cpu);
}

}  // namespace darex::cpu
