// CPU kernels of the kept-position ops (ops/positions.cpp). The positions are checked first, in
// parallel (ascending, inside the target), then one pass adds or puts back, with the target's
// lines prefetched kAhead entries ahead: at 1% density they are scattered, and a pass bound by
// memory latency needs many of them in flight.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "../common/dare_math.h"
#include "../ops/positions_args.h"

namespace darex::cpu {
namespace {

constexpr int64_t kGrain = 1 << 14;
constexpr int64_t kAhead = 16;

void check_positions(const int64_t* pos, int64_t k, int64_t n) {
  std::atomic<bool> bad{false};
  at::parallel_for(0, k, kGrain, [&](int64_t b, int64_t e) {
    int64_t prev = b == 0 ? -1 : pos[b - 1];
    for (int64_t j = b; j < e; ++j) {
      if (pos[j] <= prev || pos[j] >= n) {
        bad.store(true, std::memory_order_relaxed);
        return;
      }
      prev = pos[j];
    }
  });
  TORCH_CHECK_VALUE(!bad.load() && (k == 0 || pos[0] >= 0), "positions must be strictly increasing and inside "
                    "target (0 <= position < ", n, ")");
}

template <typename scalar_t, typename F>
void for_each_position(scalar_t* t, const int64_t* pos, int64_t k, const F& f) {
  at::parallel_for(0, k, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < std::min(e, b + kAhead); ++j) __builtin_prefetch(t + pos[j], 1, 3);
    for (int64_t j = b; j < e; ++j) {
      if (j + kAhead < e) __builtin_prefetch(t + pos[j + kAhead], 1, 3);
      f(j, t + pos[j]);
    }
  });
}

void positions_add_cpu(at::Tensor& target, const at::Tensor& positions, const at::Tensor& values, at::Tensor& saved) {
  TORCH_CHECK(target.device().is_cpu(), "target must be a CPU tensor");
  check_positions_args(target, positions, saved, &values);
  const at::Tensor pos = positions.contiguous();
  const at::Tensor v = values.contiguous();
  const int64_t k = pos.numel();
  check_positions(pos.const_data_ptr<int64_t>(), k, target.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target.scalar_type(), "darex_positions_add_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const scalar_t* vals = v.const_data_ptr<scalar_t>();
    scalar_t* out = saved.data_ptr<scalar_t>();
    for_each_position(target.data_ptr<scalar_t>(), pos.const_data_ptr<int64_t>(), k, [&](int64_t j, scalar_t* at) {
      std::memcpy(static_cast<void*>(out + j), at, sizeof(scalar_t));  // the bits, NaN payloads included
      *at = add_scaled(*at, vals[j], acc_t(1));
    });
  });
}

void positions_put_cpu(at::Tensor& target, const at::Tensor& positions, const at::Tensor& saved) {
  TORCH_CHECK(target.device().is_cpu(), "target must be a CPU tensor");
  check_positions_args(target, positions, saved, nullptr);
  const at::Tensor pos = positions.contiguous();
  const int64_t k = pos.numel();
  check_positions(pos.const_data_ptr<int64_t>(), k, target.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target.scalar_type(), "darex_positions_put_cpu", [&] {
    const scalar_t* in = saved.const_data_ptr<scalar_t>();
    for_each_position(target.data_ptr<scalar_t>(), pos.const_data_ptr<int64_t>(), k, [&](int64_t j, scalar_t* at) {
      std::memcpy(static_cast<void*>(at), in + j, sizeof(scalar_t));
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CPU, m) {
  m.impl("positions_add_", &positions_add_cpu);
  m.impl("positions_put_", &positions_put_cpu);
}

}  // namespace darex::cpu
