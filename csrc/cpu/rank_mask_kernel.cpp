// CPU kernel of the magnitude-rank mask: rows run in parallel; each row is ranked by a stable LSD
// radix sort of its |x| bits (sign cleared: non-negative floats order like their bits) carrying
// the column along, then the mask words of the row are drawn in bulk (philox_fill) and each
// element is tested against the threshold of its rank (common/rank_mask.h).
//
// A radix sort, not a comparison sort: a 4096-wide fp32 row takes three counting passes of 11-bit
// digits in L1/L2 (passes whose digit is the same for the whole row are skipped), several times
// faster than std::sort or at::sort on the same row.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include "../common/radix_key.h"
#include "../common/rank_mask.h"
#include "../common/topk_keys.h"
#include "../ops/fresh_output.h"
#include "../ops/rank_mask_args.h"
#include "philox_fill.h"

namespace darex::cpu {
namespace {

// 8-bit digits for 16-bit keys (two passes), 11-bit digits otherwise (a 2048-bin histogram per
// pass stays in L1). The sign bit is cleared, so the top digit has one bit fewer.
template <typename U>
constexpr int kDigitBits = sizeof(U) == 2 ? 8 : 11;
template <typename U>
constexpr int kPasses = (RadixTraits<U>::kBits - 1 + kDigitBits<U> - 1) / kDigitBits<U>;

// Sort items: key and column together, so each pass moves one array (one write stream).
template <typename U>
struct RankItem {
  U key;
  uint32_t column;
};

// Scratch of one thread: ranks rows of up to `cols` elements.
template <typename U>
class RowRanker {
 public:
  explicit RowRanker(int64_t cols) : items_(2 * cols), hist_(static_cast<size_t>(kPasses<U>) << kDigitBits<U>) {}

  // Counts the row's NaNs; when there are none, fills `columns` with the row's columns in ascending
  // order of |x|, equal |x| by column (LSD radix sort is stable, and columns start in order).
  template <typename scalar_t>
  int64_t order(const U* bits, int64_t n, uint32_t* columns) {
    constexpr int kD = kDigitBits<U>;
    constexpr U kDigitMask = static_cast<U>((1u << kD) - 1);
    constexpr U kMagnitude = static_cast<U>(~RadixTraits<U>::kSign);
    RankItem<U>* a = items_.data();
    RankItem<U>* b = a + n;
    std::fill(hist_.begin(), hist_.end(), 0u);
    int64_t nans = 0;
    for (int64_t j = 0; j < n; ++j) {
      const U key = static_cast<U>(bits[j] & kMagnitude);  // -0.0 becomes +0.0
      nans += key > ScoreBits<scalar_t>::kExp;            // all-ones exponent, non-zero mantissa
      a[j] = {key, static_cast<uint32_t>(j)};
      for (int p = 0; p < kPasses<U>; ++p) ++hist_[(static_cast<size_t>(p) << kD) + ((key >> (p * kD)) & kDigitMask)];
    }
    if (nans) return nans;
    for (int p = 0; p < kPasses<U>; ++p) {
      uint32_t* h = hist_.data() + (static_cast<size_t>(p) << kD);
      if (h[(a[0].key >> (p * kD)) & kDigitMask] == static_cast<uint32_t>(n)) continue;  // one digit: no-op
      uint32_t sum = 0;
      for (size_t d = 0; d <= kDigitMask; ++d) {
        const uint32_t c = h[d];
        h[d] = sum;
        sum += c;
      }
      for (int64_t j = 0; j < n; ++j) b[h[(a[j].key >> (p * kD)) & kDigitMask]++] = a[j];
      std::swap(a, b);
    }
    for (int64_t k = 0; k < n; ++k) columns[k] = a[k].column;
    return 0;
  }

 private:
  std::vector<RankItem<U>> items_;
  std::vector<uint32_t> hist_;
};

at::Tensor magnitude_rank_mask_cpu(const at::Tensor& delta, double p_lo, double p_hi, int64_t seed,
                                   int64_t offset) {
  TORCH_CHECK(delta.device().is_cpu(), "delta must be a CPU tensor");
  const auto [rows, cols] = check_rank_mask_args(delta, p_lo, p_hi, offset);
  at::Tensor mask = fresh_output(delta.sizes(), delta.options().dtype(at::kBool));
  if (delta.numel() == 0) return mask;
  const at::Tensor x = delta.contiguous();
  bool* m = mask.data_ptr<bool>();
  // Thresholds depend on the rank and the row length only: one table for every row.
  std::vector<uint32_t> threshold(static_cast<size_t>(cols));
  for (int64_t k = 0; k < cols; ++k) threshold[k] = rank_drop_threshold(p_lo, p_hi, k, cols);
  const uint64_t seed64 = static_cast<uint64_t>(seed);
  std::atomic<int64_t> nans{0};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_magnitude_rank_mask_cpu", [&] {
    using U = typename ScoreBits<scalar_t>::U;
    const U* bits = reinterpret_cast<const U*>(x.data_ptr<scalar_t>());
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / cols);
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      RowRanker<U> ranker(cols);
      std::vector<uint32_t> order(static_cast<size_t>(cols)), words(static_cast<size_t>(cols));
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t row_nans = ranker.template order<scalar_t>(bits + r * cols, cols, order.data());
        if (row_nans) {
          nans += row_nans;
          continue;  // the whole call fails below; nothing is returned
        }
        philox_fill(seed64, static_cast<uint64_t>(offset) + static_cast<uint64_t>(r * cols), cols, words.data());
        bool* out = m + r * cols;
        for (int64_t k = 0; k < cols; ++k) {
          const uint32_t j = order[k];
          out[j] = is_kept(words[j], threshold[k]);
        }
      }
    });
  });
  raise_on_rank_nan(nans.load());
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CPU, m) { m.impl("magnitude_rank_mask", &magnitude_rank_mask_cpu); }

}  // namespace darex::cpu
