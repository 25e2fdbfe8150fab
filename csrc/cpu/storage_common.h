// Helpers shared by the CPU storage kernels: the packed keep mask of a seeded tensor (computed
// once, in parallel chunks, with exclusive prefix counts so every chunk knows where its values
// start: deterministic for any thread count) and small dispatch utilities.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "../common/bitpack.h"
#include "keep_bits.h"

namespace darex::cpu {

constexpr int64_t kStorageChunk = int64_t(1) << 16;  // elements per task (a multiple of 64)
constexpr int64_t kStorageGrain = int64_t(1) << 16;  // elements per task, at least, for row loops

// The keep mask of elements [0, n) of a seeded tensor as packed bits (n / 8 bytes: 1/16 of a
// bf16 tensor), plus the value index where each chunk of kStorageChunk elements starts.
struct KeepPlan {
  std::unique_ptr<uint64_t[]> bits;
  std::vector<int64_t> starts;  // size chunks + 1; starts.back() = number kept
  int64_t n = 0;
  int64_t chunks() const { return static_cast<int64_t>(starts.size()) - 1; }
  int64_t total() const { return starts.back(); }
};

inline KeepPlan plan_keep(uint64_t seed, uint64_t offset, int64_t n, uint32_t thr) {
  KeepPlan plan;
  plan.n = n;
  const int64_t chunks = (n + kStorageChunk - 1) / kStorageChunk;
  plan.bits.reset(new uint64_t[static_cast<size_t>(std::max<int64_t>(1, (n + 63) / 64))]);
  plan.starts.assign(static_cast<size_t>(chunks + 1), 0);
  uint64_t* bits = plan.bits.get();
  int64_t* counts = plan.starts.data() + 1;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t s = c * kStorageChunk;
      counts[c] = keep_bits(seed, offset + static_cast<uint64_t>(s), std::min(kStorageChunk, n - s),
                            thr, bits + s / 64);
    }
  });
  for (int64_t c = 0; c < chunks; ++c) plan.starts[c + 1] += plan.starts[c];
  return plan;
}

// f(element, value_index) for every kept element of chunk c, in order.
template <typename F>
inline void for_each_kept_in_chunk(const KeepPlan& plan, int64_t c, const F& f) {
  const int64_t s = c * kStorageChunk;
  const int64_t e = std::min(plan.n, s + kStorageChunk);
  int64_t k = plan.starts[static_cast<size_t>(c)];
  for (int64_t w = s / 64; w < (e + 63) / 64; ++w) {
    const int64_t base = w * 64;
    for_each_set_bit(plan.bits[static_cast<size_t>(w)], [&](int j) { f(base + j, k++); });
  }
}

// Rows per parallel task so each task covers about kStorageGrain elements.
inline int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, kStorageGrain / std::max<int64_t>(1, cols));
}

// Calls f(T{}) with T the C++ type of a column-index dtype (uint8/uint16/uint32/int64).
template <typename F>
inline void dispatch_column_type(at::ScalarType t, const F& f) {
  switch (t) {
    case at::kByte: f(uint8_t{}); break;
    case at::kUInt16: f(uint16_t{}); break;
    case at::kUInt32: f(uint32_t{}); break;
    case at::kLong: f(int64_t{}); break;
    default: TORCH_CHECK_TYPE(false, "unsupported column dtype ", t);
  }
}

}  // namespace darex::cpu
