// CPU kernels of the bitmask storage format (compressed-tensors' sparse-bitmask layout): per row
// of the 2-D view, numpy.packbits(x != 0, bitorder="little"), the nonzero values in row-major
// order, and row_offsets[r] = index of row r's first value. Rows are independent, so both
// passes run in parallel over row ranges; row_offsets give each row its value position.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "../common/dare_math.h"
#include "../ops/storage_args.h"
#include "storage_common.h"

namespace darex::cpu {
namespace {

// Packs row `x` (cols values) into `bits`; returns its nonzero count.
template <typename scalar_t>
int64_t pack_row(const scalar_t* x, int64_t cols, uint8_t* bits) {
  int64_t count = 0;
  int64_t c = 0;
  for (; c + 64 <= cols; c += 64) {
    uint64_t m = 0;
    for (int j = 0; j < 64; ++j) m |= static_cast<uint64_t>(static_cast<float>(x[c + j]) != 0.0f) << j;
    std::memcpy(bits + c / 8, &m, 8);
    count += popcount64(m);
  }
  for (; c < cols; c += 8) {
    uint8_t b = 0;
    for (int j = 0; j < 8 && c + j < cols; ++j)
      b |= static_cast<uint8_t>(static_cast<uint8_t>(static_cast<float>(x[c + j]) != 0.0f) << j);
    bits[c / 8] = b;
    count += popcount64(b);
  }
  return count;
}

// f(column) for every set bit of one packed row, in column order.
template <typename F>
inline void for_each_set_column(const uint8_t* bits, int64_t row_bytes, const F& f) {
  for (int64_t b = 0; b < row_bytes; b += 8) {
    const int64_t base = b * 8;
    for_each_set_bit(load_bits(bits + b, row_bytes - b), [&](int j) { f(base + j); });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bitmask_pack_cpu(const at::Tensor& dense) {
  TORCH_CHECK(dense.device().is_cpu(), "dense must be a CPU tensor");
  check_values_tensor(dense, "dense");
  const RowView v = row_view(dense);
  const int64_t bpr = packed_row_bytes(v.cols);
  const at::Tensor x = dense.contiguous();
  at::Tensor bitmask = at::empty({v.rows, bpr}, dense.options().dtype(at::kByte));
  at::Tensor row_offsets = at::empty({v.rows}, dense.options().dtype(at::kLong));
  int64_t* ro = row_offsets.data_ptr<int64_t>();
  uint8_t* bm = bitmask.data_ptr<uint8_t>();
  at::Tensor values;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_bitmask_pack_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    std::vector<int64_t> counts(static_cast<size_t>(v.rows));
    at::parallel_for(0, v.rows, row_grain(v.cols), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) counts[r] = pack_row(src + r * v.cols, v.cols, bm + r * bpr);
    });
    int64_t total = 0;
    for (int64_t r = 0; r < v.rows; ++r) {
      ro[r] = total;
      total += counts[r];
    }
    values = at::empty({total}, dense.options());
    scalar_t* dst = values.data_ptr<scalar_t>();
    at::parallel_for(0, v.rows, row_grain(v.cols), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = src + r * v.cols;
        int64_t k = ro[r];
        for_each_set_column(bm + r * bpr, bpr, [&](int64_t c) { dst[k++] = row[c]; });
      }
    });
  });
  return {values, bitmask, row_offsets};
}

void bitmask_scatter_cpu(at::Tensor& out, const at::Tensor& values, const at::Tensor& bitmask,
                         const at::Tensor& row_offsets, double alpha, bool accumulate) {
  TORCH_CHECK(out.device().is_cpu(), "out must be a CPU tensor");
  check_bitmask_layout(out, values, bitmask, row_offsets);
  check_scatter_scalars(alpha);
  const RowView v = row_view(out);
  const int64_t bpr = packed_row_bytes(v.cols);
  const at::Tensor bm_t = bitmask.contiguous();
  const at::Tensor ro_t = row_offsets.contiguous();
  const uint8_t* bm = bm_t.const_data_ptr<uint8_t>();
  const int64_t* ro = ro_t.const_data_ptr<int64_t>();
  // Validate every row before anything is written.
  std::vector<int64_t> counts(static_cast<size_t>(v.rows));
  std::vector<uint8_t> dirty(static_cast<size_t>(v.rows), 0);
  const uint8_t pad = padding_bits(v.cols);
  at::parallel_for(0, v.rows, row_grain(v.cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = bm + r * bpr;
      int64_t c = 0;
      for (int64_t b = 0; b < bpr; b += 8) c += popcount64(load_bits(row + b, bpr - b));
      counts[r] = c;
      dirty[r] = bpr > 0 && (row[bpr - 1] & pad) != 0;
    }
  });
  bool any_dirty = false;
  for (uint8_t d : dirty) any_dirty |= d != 0;
  validate_bitmask_counts(ro, counts.data(), v.rows, values.numel(), any_dirty);
  if (out.numel() == 0) return;
  const at::Tensor vals = values.contiguous();
  at::Tensor work = out.is_contiguous() ? out : out.contiguous();
  if (!accumulate) work.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_bitmask_scatter_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* src = vals.const_data_ptr<scalar_t>();
    scalar_t* dst = work.data_ptr<scalar_t>();
    const acc_t a = static_cast<acc_t>(alpha);
    at::parallel_for(0, v.rows, row_grain(v.cols), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        scalar_t* row = dst + r * v.cols;
        const scalar_t* val = src + ro[r];
        int64_t k = 0;
        if (accumulate) {
          for_each_set_column(bm + r * bpr, bpr, [&](int64_t c) {
            row[c] = static_cast<scalar_t>(acc_add(static_cast<acc_t>(row[c]), acc_mul(a, static_cast<acc_t>(val[k++]))));
          });
        } else {
          for_each_set_column(bm + r * bpr, bpr, [&](int64_t c) { row[c] = val[k++]; });
        }
      }
    });
  });
  if (!work.is_same(out)) out.copy_(work);
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CPU, m) {
  m.impl("bitmask_pack", &bitmask_pack_cpu);
  m.impl("bitmask_scatter_", &bitmask_scatter_cpu);
}

}  // namespace darex::cpu
