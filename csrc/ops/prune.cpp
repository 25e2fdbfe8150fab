// Schemas of the seeded DARE ops. Kernels: cpu/prune_kernel.cpp, cuda/prune_kernel.cu; typed
// wrappers with argument checks, and fakes: darex_ext/ops/prune.py; reference:
// darex_ext/reference/prune.py. The mask is the one of docs/mask_spec.md.
//
// Shared arguments: `p` drop rate in [0, 1); `seed` the 64-bit mask seed passed as its int64
// bit pattern; `offset` the flat index of element 0 (for streaming a tensor in pieces);
// `q_rows` optional per-row q (1-D, accumulation dtype, length size(0)); `q` the scalar q used
// when q_rows is None; `mask_spec` the mask spec version (1 = philox, 2 = skip, the default; see
// ops/prune_args.h). Kept elements are scaled by 1/q (see common/dare_math.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>

#include "fresh_output.h"
#include "prune_args.h"

TORCH_LIBRARY_FRAGMENT(darex, m) {
  m.def(
      "prune_(Tensor(a!) delta, float p, int seed, int offset, Tensor? q_rows, float q, "
      "int mask_spec=2) -> ()");
  m.def(
      "dare(Tensor finetuned, Tensor base, float p, int seed, int offset, Tensor? q_rows, "
      "float q, int mask_spec=2) -> Tensor");
  m.def(
      "dare_out(Tensor finetuned, Tensor base, float p, int seed, int offset, Tensor? q_rows, "
      "float q, Tensor(a!) out, int mask_spec=2) -> ()");
  m.def("keep_mask(Tensor like, float p, int seed, int offset, int mask_spec=2) -> Tensor");
  // [sum of |x| over kept elements, sum of |x| over all elements], float64; for rescale="l1".
  m.def("kept_abs_sum(Tensor delta, float p, int seed, int offset, int mask_spec=2) -> Tensor");
}

namespace darex {
namespace {

// dare = a fresh contiguous output + dare_out, the same on every device.
at::Tensor dare_composite(const at::Tensor& finetuned, const at::Tensor& base, double p, int64_t seed,
                          int64_t offset, const std::optional<at::Tensor>& q_rows, double q,
                          int64_t mask_spec) {
  mask_spec = effective_mask_spec(mask_spec, p);  // dare_out resolves it too; an invalid spec stays invalid
  at::Tensor out = fresh_output(finetuned.sizes(), finetuned.options());
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("darex::dare_out", "").typed<void(
      const at::Tensor&, const at::Tensor&, double, int64_t, int64_t, const std::optional<at::Tensor>&, double,
      at::Tensor&, int64_t)>();
  op.call(finetuned, base, p, seed, offset, q_rows, q, out, mask_spec);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CompositeExplicitAutograd, m) { m.impl("dare", &dare_composite); }

}  // namespace darex
