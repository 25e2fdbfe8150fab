// The row of a flat index, tracked instead of divided. A grid-stride loop visits i0, i0 + step,
// i0 + 2 step, ... (groups of 4 elements starting at i0); per-row q needs each element's row,
// and a 64-bit division per element costs more than the rest of the DARE math on a GPU (there is
// no divide instruction: div.s64 is a routine of ~70 instructions). One division when a cursor
// starts and one per distinct step; afterwards an add and a compare per step and per element.
#pragma once

#include <cstdint>

#include "macros.h"

namespace darex {

// A fixed stride in (rows, columns): step = rows * len + cols, 0 <= cols < len.
struct RowStep {
  int64_t rows = 0, cols = 0;
  DAREX_HD_INLINE static RowStep of(int64_t step, int64_t len) {
    RowStep s;
    if (len > 0) {
      s.rows = step / len;
      s.cols = step - s.rows * len;
    }
    return s;
  }
};

struct RowCursor {
  int64_t row = 0;  // floor(i0 / len): -1 for a group that starts before the tensor (i0 < 0)
  int64_t col = 0;  // i0 - row * len, always in [0, len)
  int64_t len = 0;  // row length; 0: no rows (scalar q), the cursor stays at 0

  // i0 >= -3 (the first Philox block may start before the tensor), len >= 0.
  DAREX_HD_INLINE static RowCursor at(int64_t i0, int64_t len) {
    RowCursor c;
    if (len <= 0) return c;
    c.len = len;
    c.row = i0 >= 0 ? i0 / len : -((-i0 + len - 1) / len);
    c.col = i0 - c.row * len;
    return c;
  }

  // Moves the cursor by `s` (made by RowStep::of for this len).
  DAREX_HD_INLINE void advance(const RowStep& s) {
    if (len == 0) return;
    row += s.rows;
    col += s.cols;
    if (col >= len) {  // both were < len, so one wrap is enough
      col -= len;
      ++row;
    }
  }

  // rows[w] = row of element i0 + w, w < 4 (meaningless where i0 + w < 0). The column passes a
  // row end at most once per element, so rows shorter than 4 work too.
  DAREX_HD_INLINE void group_rows(int64_t rows[4]) const {
    int64_t r = row, c = col;
    for (int w = 0; w < 4; ++w) {
      if (len > 0 && c >= len) {
        c -= len;
        ++r;
      }
      rows[w] = r;
      ++c;
    }
  }
};

}  // namespace darex
