// Bulk generation of the mask spec's words on the CPU: the hot loop of every seeded op.
#pragma once

#include <cstdint>

namespace darex::cpu {

// u[k] = word of flat element (first_index + k) per the mask spec, for k in [0, n).
// Vectorized (AVX2) where the CPU has it, scalar otherwise; identical results either way.
void philox_fill(uint64_t seed, uint64_t first_index, int64_t n, uint32_t* u);

// u[k] = draw (first_draw + k) of `stripe` under mask spec v2 (common/skip_mask.h: counter
// (stripe lo, stripe hi, draw / 4, 1), word draw % 4), vectorized like philox_fill.
void philox_fill_stripe(uint64_t seed, uint64_t stripe, uint64_t first_draw, int64_t n, uint32_t* u);

// The scalar path alone, for tests and for CPUs without AVX2.
void philox_fill_scalar(uint64_t seed, uint64_t first_index, int64_t n, uint32_t* u);

// Name of the implementation philox_fill uses on this CPU ("avx512", "avx2" or "scalar"; see
// isa.h).
const char* philox_fill_isa();

}  // namespace darex::cpu
