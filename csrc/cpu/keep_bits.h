// The mask spec's keep test in bulk, as packed bits: the first pass of every seeded storage op.
#pragma once

#include <cstdint>

namespace darex::cpu {

// bits[j / 64] bit (j % 64) = kept(first_index + j) for j in [0, n): u >= thr with u the mask
// word of that element. Writes ceil(n / 64) words (the unused high bits of the last are zero)
// and returns the number of kept elements. Vectorized compare on AVX2 / AVX-512.
int64_t keep_bits(uint64_t seed, uint64_t first_index, int64_t n, uint32_t thr, uint64_t* bits);

}  // namespace darex::cpu
