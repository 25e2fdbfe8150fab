// Bit packing shared by the storage kernels (CPU and CUDA). The layout is numpy.packbits(...,
// bitorder="little") per row, as compressed-tensors' sparse-bitmask: bit j of byte b of a row
// flags column 8 * b + j. Bytes read as a little-endian uint64 therefore flag 64 consecutive
// columns, which the CPU loops rely on (x86 and ARM are little-endian; checked at build time).
#pragma once

#include <cstdint>
#include <cstring>

#include "macros.h"

namespace darex {

#if !defined(__CUDA_ARCH__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "darex bit packing assumes a little-endian host"
#endif

// Bytes per packed row of `cols` flags.
DAREX_HD_INLINE int64_t packed_row_bytes(int64_t cols) { return (cols + 7) / 8; }

// Bits of the last byte of a row that lie past the row end (they must be zero in a valid file).
DAREX_HD_INLINE uint8_t padding_bits(int64_t cols) {
  const int used = static_cast<int>(cols & 7);
  return used == 0 ? uint8_t(0) : static_cast<uint8_t>(0xFFu << used);
}

DAREX_HD_INLINE int popcount64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return __popcll(x);
#else
  return __builtin_popcountll(x);
#endif
}

DAREX_HD_INLINE int lowest_bit(uint64_t x) {  // x != 0
#if defined(__CUDA_ARCH__)
  return __ffsll(static_cast<long long>(x)) - 1;
#else
  return __builtin_ctzll(x);
#endif
}

// Up to 8 bytes of a packed row as one little-endian word (missing bytes read as zero).
DAREX_HD_INLINE uint64_t load_bits(const uint8_t* p, int64_t nbytes) {
  uint64_t w = 0;
  if (nbytes >= 8) {
#if defined(__CUDA_ARCH__)
    for (int k = 0; k < 8; ++k) w |= static_cast<uint64_t>(p[k]) << (8 * k);
#else
    std::memcpy(&w, p, 8);
#endif
    return w;
  }
  for (int64_t k = 0; k < nbytes; ++k) w |= static_cast<uint64_t>(p[k]) << (8 * k);
  return w;
}

// Calls f(bit_index) for every set bit of w, lowest first.
template <typename F>
DAREX_HD_INLINE void for_each_set_bit(uint64_t w, const F& f) {
  while (w != 0) {
    f(lowest_bit(w));
    w &= w - 1;
  }
}

}  // namespace darex
