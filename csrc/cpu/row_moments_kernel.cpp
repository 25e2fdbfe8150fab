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

// The element loops, compiled once per instruction set (see row_moments_spans.inc).
#define DAREX_ISA_SPANS "row_moments_spans.inc"
#include "isa.h"

namespace darex::cpu {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per parallel task, at least

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
        DAREX_ISA_CALL(row_moments_span, dp + r * cols, xp, cols, sp + r, qp + r);
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
