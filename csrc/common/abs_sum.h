// The fixed float64 summation order of kept_abs_sum (docs/mask_spec.md, "Numerics"), shared by
// the CPU loop and the CUDA kernel so both give the same bits for any thread or SM count:
//  - chunk c holds local elements [c * kAbsSumChunk, (c + 1) * kAbsSumChunk);
//  - in a chunk, element r (chunk-local) belongs to lane (r / kAbsSumGroup) % kAbsSumLanes, and
//    each lane adds |x| of its elements in increasing index order, starting from +0.0 (the kept
//    sum adds only kept elements: adding +0.0 instead leaves a lane unchanged);
//  - the lanes are combined by a fixed tree: for s = kAbsSumLanes / 2, ..., 2, 1:
//    lane[j] = lane[j] + lane[j + s] for j < s; the chunk's sum is lane[0];
//  - the result is ((+0.0 + chunk_0) + chunk_1) + ...; a NaN result becomes the canonical NaN.
// A lane's kAbsSumGroup consecutive elements are one thread's aligned group on the device (one
// or two Philox blocks), and a step of kAbsSumLanes * kAbsSumGroup elements is one coalesced
// pass of a 256-thread block.
#pragma once

#include <cstdint>

#include "macros.h"

namespace darex {

constexpr int64_t kAbsSumLanes = 256;
constexpr int64_t kAbsSumGroup = 4;
constexpr int64_t kAbsSumStep = kAbsSumLanes * kAbsSumGroup;  // elements per pass over the lanes
constexpr int64_t kAbsSumSteps = 64;
constexpr int64_t kAbsSumChunk = kAbsSumStep * kAbsSumSteps;   // 65536 elements
static_assert((kAbsSumLanes & (kAbsSumLanes - 1)) == 0, "the lane tree halves evenly");

}  // namespace darex
