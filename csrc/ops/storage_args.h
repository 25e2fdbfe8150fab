// Entry checks of the storage ops (schemas: ops/seeded.cpp, ops/bitmask.cpp, ops/csr.cpp),
// shared by the CPU and CUDA kernels.
//
// Every format works on the 2-D view of a tensor (rows = size(0), cols = the other dims
// flattened; 0-d and 1-d tensors are one row). The *_scatter_ ops decode into `out`:
// accumulate=False writes every element (kept ones the stored value, the rest 0; `alpha` unused),
// accumulate=True adds alpha * value in float32 (float64 for float64) with one rounding to the
// dtype, touching only kept elements. They validate all of their inputs before writing and raise
// ValueError on any inconsistency, so an untrusted file can never crash or write out of bounds:
// everything that decides where a write lands is checked here, on the host, before any kernel
// writes (see validate_* below).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "../common/bitpack.h"
#include "prune_args.h"

namespace darex {

// The 2-D view every storage format uses: rows = size(0), cols = the other dims flattened;
// 0-d and 1-d tensors are one row.
struct RowView {
  int64_t rows;
  int64_t cols;
};

inline RowView row_view(const at::Tensor& t) {
  if (t.dim() <= 1) return {1, t.numel()};
  int64_t cols = 1;
  for (int64_t d = 1; d < t.dim(); ++d) cols *= t.size(d);
  return {t.size(0), cols};
}

// values: 1-D, same dtype and device as out (the tensor it is scattered into).
inline void check_values_for(const at::Tensor& out, const at::Tensor& values) {
  check_values_tensor(out, "out");
  TORCH_CHECK_VALUE(values.dim() == 1, "values must be 1-D, got shape ", values.sizes());
  TORCH_CHECK_TYPE(values.scalar_type() == out.scalar_type(), "values must be ", out.scalar_type(),
                   " like out, got ", values.scalar_type());
  TORCH_CHECK_VALUE(values.device() == out.device(), "values must be on ", out.device(), ", got ",
                    values.device());
}

inline void check_index_tensor(const at::Tensor& t, const char* name, at::ScalarType want,
                               int64_t length, const at::Tensor& out) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, name, " must be ", want, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == length, name, " must have shape [", length,
                    "], got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == out.device(), name, " must be on ", out.device(), ", got ",
                    t.device());
}

inline void check_bitmask_layout(const at::Tensor& out, const at::Tensor& values,
                                 const at::Tensor& bitmask, const at::Tensor& row_offsets) {
  check_values_for(out, values);
  const RowView v = row_view(out);
  TORCH_CHECK_TYPE(bitmask.scalar_type() == at::kByte, "bitmask must be uint8, got ",
                   bitmask.scalar_type());
  TORCH_CHECK_VALUE(bitmask.dim() == 2 && bitmask.size(0) == v.rows &&
                        bitmask.size(1) == packed_row_bytes(v.cols),
                    "bitmask must have shape [", v.rows, ", ", packed_row_bytes(v.cols),
                    "] for a tensor of shape ", out.sizes(), ", got ", bitmask.sizes());
  TORCH_CHECK_VALUE(bitmask.device() == out.device(), "bitmask must be on ", out.device());
  check_index_tensor(row_offsets, "row_offsets", at::kLong, v.rows, out);
}

// row_counts[r] = set bits of row r; padding_dirty: some row has a bit set past its end.
inline void validate_bitmask_counts(const int64_t* row_offsets, const int64_t* row_counts,
                                    int64_t rows, int64_t num_values, bool padding_dirty) {
  TORCH_CHECK_VALUE(!padding_dirty, "bitmask: padding bits past the end of a row are set");
  int64_t expected = 0;
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK_VALUE(row_offsets[r] == expected, "row_offsets[", r, "] = ", row_offsets[r],
                      " but the bitmask rows before it have ", expected, " set bits");
    expected += row_counts[r];
  }
  TORCH_CHECK_VALUE(expected == num_values, "bitmask has ", expected,
                    " set bits but there are ", num_values, " values");
}

inline bool is_column_dtype(at::ScalarType t) {
  return t == at::kByte || t == at::kUInt16 || t == at::kUInt32 || t == at::kLong;
}

// Narrowest unsigned column dtype for `cols` columns (indices 0 .. cols - 1).
inline at::ScalarType column_dtype(int64_t cols) {
  if (cols <= (int64_t(1) << 8)) return at::kByte;
  if (cols <= (int64_t(1) << 16)) return at::kUInt16;
  if (cols <= (int64_t(1) << 32)) return at::kUInt32;
  return at::kLong;
}

inline void check_csr_layout(const at::Tensor& out, const at::Tensor& crow, const at::Tensor& col,
                             const at::Tensor& values) {
  check_values_for(out, values);
  const RowView v = row_view(out);
  check_index_tensor(crow, "crow", at::kLong, v.rows + 1, out);
  TORCH_CHECK_TYPE(is_column_dtype(col.scalar_type()),
                   "col must be uint8, uint16, uint32 or int64, got ", col.scalar_type());
  TORCH_CHECK_VALUE(col.dim() == 1 && col.size(0) == values.size(0), "col must have shape [",
                    values.size(0), "] like values, got ", col.sizes());
  TORCH_CHECK_VALUE(col.device() == out.device(), "col must be on ", out.device());
}

// crow: starts at 0, never decreases, ends at the value count.
inline void validate_crow(const int64_t* crow, int64_t rows, int64_t nnz) {
  TORCH_CHECK_VALUE(crow[0] == 0, "crow[0] must be 0, got ", crow[0]);
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK_VALUE(crow[r + 1] >= crow[r], "crow decreases at row ", r, ": ", crow[r], " -> ",
                      crow[r + 1]);
  TORCH_CHECK_VALUE(crow[rows] == nnz, "crow[-1] = ", crow[rows], " but there are ", nnz,
                    " values");
}

inline void check_scatter_scalars(double alpha) {
  TORCH_CHECK_VALUE(std::isfinite(alpha), "alpha must be finite, got ", alpha);
}

// Calls f(T{}) with T the C++ type of a CSR column-index dtype (uint8/uint16/uint32/int64);
// shared by the CPU and CUDA kernels.
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

}  // namespace darex
