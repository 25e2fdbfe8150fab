// Schemas of the kept-position ops behind serving.DeltaBank: a sparse delta added at explicit
// ascending flat positions of a parameter, the overwritten bits kept, and put back later. One
// pass over the kept entries each (the positions are known up front, so their scattered cache
// lines are prefetched). Kernels: cpu/positions_kernel.cpp, cuda/positions_kernel.cu;
// wrappers and fakes: darex_ext/ops/positions.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(darex, m) {
  // saved[j] = bits of target.flat[positions[j]]; target.flat[positions[j]] = that + values[j]
  // in float32 (float64 for float64), one rounding (add_scaled with alpha 1: the rule of
  // SparseDelta.add_to_). positions: int64, strictly increasing, inside target.
  m.def("positions_add_(Tensor(a!) target, Tensor positions, Tensor values, Tensor(b!) saved) -> ()");
  // target.flat[positions[j]] = bits of saved[j].
  m.def("positions_put_(Tensor(a!) target, Tensor positions, Tensor saved) -> ()");
}
