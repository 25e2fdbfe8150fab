// New output tensors of the ops that return one (keep_mask, dare, rank_mask, topk_mask).
#pragma once

#include <ATen/ATen.h>

namespace darex {

// at::empty(sizes, options), with a large CPU output advised to use transparent huge pages
// before anything writes it (fresh_output.cpp says why and when).
at::Tensor fresh_output(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace darex
