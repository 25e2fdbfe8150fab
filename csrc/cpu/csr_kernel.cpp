// CPU kernels of the CSR storage format over the 2-D view: crow (int64, rows + 1), col (the
// narrowest unsigned dtype for the column count) and values. Parallel over row ranges; crow
// gives each row its value position. The scatter validates crow and every column index (in
// range, strictly increasing within a row) before it writes.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "../common/dare_math.h"
#include "../ops/fresh_output.h"
#include "../ops/storage_args.h"
#include "storage_common.h"

namespace darex::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_pack_cpu(const at::Tensor& dense) {
  TORCH_CHECK(dense.device().is_cpu(), "dense must be a CPU tensor");
  check_values_tensor(dense, "dense");
  const RowView v = row_view(dense);
  const at::Tensor x = dense.contiguous();
  at::Tensor crow = at::empty({v.rows + 1}, dense.options().dtype(at::kLong));
  int64_t* cr = crow.data_ptr<int64_t>();
  at::Tensor col, values;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_csr_pack_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    const int64_t bpr = packed_row_bytes(v.cols);
    std::vector<int64_t> counts(static_cast<size_t>(v.rows));
    at::parallel_for(0, v.rows, row_grain(v.cols), [&](int64_t r0, int64_t r1) {
      std::vector<uint8_t> bits(static_cast<size_t>(bpr));
      for (int64_t r = r0; r < r1; ++r) counts[r] = pack_nonzero_row(src + r * v.cols, v.cols, bits.data());
    });
    cr[0] = 0;
    for (int64_t r = 0; r < v.rows; ++r) cr[r + 1] = cr[r] + counts[r];
    const int64_t nnz = cr[v.rows];
    values = fresh_output({nnz}, dense.options());
    col = fresh_output({nnz}, dense.options().dtype(column_dtype(v.cols)));
    scalar_t* dst = values.data_ptr<scalar_t>();
    dispatch_column_type(col.scalar_type(), [&](auto tag) {
      using index_t = decltype(tag);
      index_t* ci = static_cast<index_t*>(col.data_ptr());
      at::parallel_for(0, v.rows, row_grain(v.cols), [&](int64_t r0, int64_t r1) {
        std::vector<uint8_t> bits(static_cast<size_t>(bpr));
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* row = src + r * v.cols;
          pack_nonzero_row(row, v.cols, bits.data());
          int64_t k = cr[r];
          for_each_set_column(bits.data(), bpr, [&](int64_t c) {
            ci[k] = static_cast<index_t>(c);
            dst[k++] = row[c];
          });
        }
      });
    });
  });
  return {crow, col, values};
}

void csr_scatter_cpu(at::Tensor& out, const at::Tensor& crow, const at::Tensor& col,
                     const at::Tensor& values, double alpha, bool accumulate) {
  TORCH_CHECK(out.device().is_cpu(), "out must be a CPU tensor");
  check_csr_layout(out, crow, col, values);
  check_scatter_scalars(alpha);
  const RowView v = row_view(out);
  const at::Tensor cr_t = crow.contiguous();
  const at::Tensor ci_t = col.contiguous();
  const int64_t* cr = cr_t.const_data_ptr<int64_t>();
  validate_crow(cr, v.rows, values.numel());
  dispatch_column_type(ci_t.scalar_type(), [&](auto tag) {
    using index_t = decltype(tag);
    const index_t* ci = static_cast<const index_t*>(ci_t.const_data_ptr());
    // Every column index in range and strictly increasing within its row, before any write.
    std::vector<int64_t> bad(static_cast<size_t>(v.rows), -1);  // first bad value index per row
    at::parallel_for(0, v.rows, row_grain(v.cols), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int64_t prev = -1;
        for (int64_t k = cr[r]; k < cr[r + 1]; ++k) {
          const int64_t c = static_cast<int64_t>(ci[k]);
          if (c <= prev || c >= v.cols) {
            bad[r] = k;
            break;
          }
          prev = c;
        }
      }
    });
    for (int64_t r = 0; r < v.rows; ++r) {
      const int64_t k = bad[r];
      TORCH_CHECK_VALUE(k < 0, "col[", k, "] = ", static_cast<int64_t>(ci[k]), " in row ", r,
                        " is out of range [0, ", v.cols, ") or not after the previous column");
    }
    if (out.numel() == 0) return;
    const at::Tensor vals = values.contiguous();
    at::Tensor work = out.is_contiguous() ? out : out.contiguous();
    if (!accumulate) work.zero_();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_csr_scatter_cpu", [&] {
      using acc_t = acc_of<scalar_t>;
      const scalar_t* src = vals.const_data_ptr<scalar_t>();
      scalar_t* dst = work.data_ptr<scalar_t>();
      const acc_t a = static_cast<acc_t>(alpha);
      at::parallel_for(0, v.rows, row_grain(v.cols), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          scalar_t* row = dst + r * v.cols;
          for (int64_t k = cr[r]; k < cr[r + 1]; ++k) {
            const int64_t c = static_cast<int64_t>(ci[k]);
            row[c] = accumulate ? add_scaled(row[c], src[k], a) : src[k];
          }
        }
      });
    });
    if (!work.is_same(out)) out.copy_(work);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CPU, m) {
  m.impl("csr_pack", &csr_pack_cpu);
  m.impl("csr_scatter_", &csr_scatter_cpu);
}

}  // namespace darex::cpu
