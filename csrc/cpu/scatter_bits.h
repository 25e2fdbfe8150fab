// The inner loop of every CPU decode / add of the storage formats: a run of elements flagged by a
// little-endian bit stream receives consecutive values.
#pragma once

#include <cstdint>

namespace darex::cpu {

// For j in [0, nbits): if bit j of `bits` is set, element dst[j] takes the next value of `src`.
// accumulate=false writes every dst[j] (flagged: the value, others +0); accumulate=true sets
// dst[j] = round(dst[j] + alpha * value) in float32 (float64 for double) for flagged j only.
// Bits at or past nbits must be zero (callers validate). Returns the number of values used.
// AVX-512 path (fp32 / bf16 / fp64): expand-loads 16 (8) values per mask group; in accumulate
// mode a sparse 64-bit mask word (the usual case at DARE densities) is added entry by entry
// instead. Scalar loop elsewhere. All paths give identical bits.
template <typename scalar_t>
int64_t scatter_bits(const uint8_t* bits, int64_t nbits, const scalar_t* src, scalar_t* dst,
                     double alpha, bool accumulate);

}  // namespace darex::cpu
