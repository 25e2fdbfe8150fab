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
#include "../ops/fresh_output.h"
#include "../ops/storage_args.h"
#include "scatter_bits.h"
#include "storage_common.h"

namespace darex::cpu {
namespace {

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
      for (int64_t r = r0; r < r1; ++r) counts[r] = pack_nonzero_row(src + r * v.cols, v.cols, bm + r * bpr);
    });
    int64_t total = 0;
    for (int64_t r = 0; r < v.rows; ++r) {
      ro[r] = total;
      total += counts[r];
    }
    values = fresh_output({total}, dense.options());
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_bitmask_scatter_cpu", [&] {
    const scalar_t* src = vals.const_data_ptr<scalar_t>();
    scalar_t* dst = work.data_ptr<scalar_t>();
    at::parallel_for(0, v.rows, row_grain(v.cols), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        scatter_bits(bm + r * bpr, v.cols, src + ro[r], dst + r * v.cols, alpha, accumulate);
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
