// Framework-free tests of csrc/common (Philox, drop threshold, element math) and of the bulk
// Philox fill. ctest runs this binary three times: natively and with DAREX_CPU_ISA=avx2|scalar,
// so every vector path is compared with the scalar one on this CPU.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "check.h"
#include "common/bitpack.h"
#include "common/dare_math.h"
#include "common/philox.h"
#include "common/row_cursor.h"
#include "common/skip_mask.h"
#include "cpu/philox_fill.h"

using darex::Philox4;

static void check_block(const Philox4& got, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  CHECK_EQ(got.v[0], a);
  CHECK_EQ(got.v[1], b);
  CHECK_EQ(got.v[2], c);
  CHECK_EQ(got.v[3], d);
}

// Random123 kat_vectors, philox4x32 10 rounds.
TEST(philox_known_answers) {
  check_block(darex::philox4x32_10(Philox4{{0, 0, 0, 0}}, 0, 0),  //
              0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8);
  check_block(darex::philox4x32_10(Philox4{{~0u, ~0u, ~0u, ~0u}}, ~0u, ~0u),  //
              0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd);
  check_block(darex::philox4x32_10(Philox4{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}},
                                   0xa4093822, 0x299f31d0),
              0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1);
  // The spec's entry point: seed 0, block 0 is the first vector.
  check_block(darex::philox_block(0, 0), 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8);
}

TEST(philox_block_key_and_counter_layout) {
  const uint64_t seed = 0xa4093822299f31d0ull;  // key = (seed lo, seed hi)
  const Philox4 got = darex::philox_block(seed, 0x1234567800000009ull);
  const Philox4 want = darex::philox4x32_10(Philox4{{0x00000009, 0x12345678, 0, 0}}, 0x299f31d0, 0xa4093822);
  check_block(got, want.v[0], want.v[1], want.v[2], want.v[3]);
}

TEST(philox_word_is_word_of_block) {
  const uint64_t seeds[] = {0, 1, 42, 0xdeadbeefcafef00dull, ~0ull};
  const uint64_t indices[] = {0, 1, 2, 3, 4, 7, 1001, (1ull << 32) - 1, 1ull << 32, (1ull << 34) - 1,
                              1ull << 34, (1ull << 34) + 6, 0x7fffffffffffffffull};
  for (uint64_t s : seeds)
    for (uint64_t i : indices) CHECK_EQ(darex::philox_word(s, i), darex::philox_block(s, i / 4).v[i % 4]);
  // Block 2^32 + 5 must put the 1 in the counter's high word, not drop it.
  const Philox4 high = darex::philox_block(7, (1ull << 32) + 5);
  const Philox4 want = darex::philox4x32_10(Philox4{{5, 1, 0, 0}}, 7, 0);
  check_block(high, want.v[0], want.v[1], want.v[2], want.v[3]);
  CHECK(darex::philox_block(7, (1ull << 32) + 5).v[0] != darex::philox_block(7, 5).v[0]);
}

TEST(drop_threshold) {
  CHECK_EQ(darex::drop_threshold(0.0), 0u);
  CHECK_EQ(darex::drop_threshold(0.5), 0x80000000u);
  CHECK_EQ(darex::drop_threshold(0.25), 0x40000000u);
  CHECK_EQ(darex::drop_threshold(1.0 - std::ldexp(1.0, -33)), 0xFFFFFFFFu);  // 2^32 - 0.5, clamped
  CHECK_EQ(darex::drop_threshold(0.9), static_cast<uint32_t>(std::floor(0.9 * 4294967296.0)));
  CHECK_EQ(darex::drop_threshold(1e-12), 0u);  // floor(0.0043): tiny p keeps everything
  // Keep test is u >= T: with p = 0 even u = 0 is kept; with T = 2^32-1 only u = 2^32-1 is.
  CHECK(darex::is_kept(0u, darex::drop_threshold(0.0)));
  CHECK(!darex::is_kept(0xFFFFFFFEu, 0xFFFFFFFFu));
  CHECK(darex::is_kept(0x80000000u, darex::drop_threshold(0.5)));
  CHECK(!darex::is_kept(0x7FFFFFFFu, darex::drop_threshold(0.5)));
}

template <typename T>
static void check_element_math(T q) {
  const T inv = darex::inverse_q<T>(q);
  CHECK_EQ(inv, T(1) / q);
  const T xs[] = {T(3.25), T(-3.25), T(0), -T(0), T(1e-30)};
  for (T x : xs) {
    CHECK_EQ(darex::prune_value<T>(x, inv, true), x * inv);
    const T dropped = darex::prune_value<T>(x, inv, false);
    CHECK_EQ(dropped, T(0));
    // +0, not -0, even for negative x: CPU and CUDA outputs are compared bit for bit.
    CHECK(!std::signbit(dropped));
    const T base = T(-1.5);
    CHECK_EQ(darex::dare_value<T>(x, base, inv, false), base);
    const T diff = x - base;  // separate statements: one rounding per operation
    const T scaled = diff * inv;
    CHECK_EQ(darex::dare_value<T>(x, base, inv, true), base + scaled);
  }
}

TEST(element_math) {
  CHECK_EQ(darex::inverse_q<float>(0.1f), 1.0f / 0.1f);
  CHECK_EQ(darex::inverse_q<double>(0.1), 1.0 / 0.1);
  check_element_math<float>(0.1f);
  check_element_math<float>(0.7f);
  check_element_math<double>(0.1);
  check_element_math<double>(0.3);
}

// DAREX_CPU_ISA must actually narrow the path, or the forced-ISA ctest entries test nothing new.
TEST(forced_isa_is_honoured) {
  const char* env = std::getenv("DAREX_CPU_ISA");
  const std::string isa = darex::cpu::philox_fill_isa();
  std::printf("  philox_fill ISA: %s (DAREX_CPU_ISA=%s)\n", isa.c_str(), env ? env : "");
  if (env && std::string(env) == "scalar") CHECK_EQ(isa, std::string("scalar"));
  if (env && std::string(env) == "avx2") CHECK(isa != "avx512");
}

TEST(philox_fill_matches_scalar) {
  const uint64_t seeds[] = {0, 1, 0x9e3779b97f4a7c15ull, 0xffffffff00000000ull, ~0ull};
  const uint64_t four_g = 1ull << 32;
  const uint64_t firsts[] = {0, 1, 2, 3, 4, 5, 61, 64, 1000003,
                             // the block counter crosses 2^32 inside a vector batch
                             4 * four_g - 4 * 5, 4 * four_g - 4 * 5 + 3, 4 * four_g - 1, 4 * four_g,
                             4 * four_g + 2, 0x3fffffffffffff01ull};
  const int64_t sizes[] = {0, 1, 3, 5, 31, 32, 33, 63, 64, 65, 1000};
  constexpr uint32_t kCanary = 0xC0FFEE11u;
  constexpr int64_t kSlack = 80;  // more than one AVX-512 step: catches a tail overrun
  for (uint64_t seed : seeds)
    for (uint64_t first : firsts)
      for (int64_t n : sizes) {
        std::vector<uint32_t> want(n + kSlack, kCanary), got(n + kSlack, kCanary);
        darex::cpu::philox_fill_scalar(seed, first, n, want.data());
        darex::cpu::philox_fill(seed, first, n, got.data());
        bool ok = true;
        for (int64_t k = 0; k < n && ok; ++k) {
          ok = CHECK_EQ(want[k], darex::philox_word(seed, first + k)) && CHECK_EQ(got[k], want[k]);
          if (!ok) std::printf("    seed=%llx first=%llx n=%lld k=%lld\n", (unsigned long long)seed,
                               (unsigned long long)first, (long long)n, (long long)k);
        }
        for (int64_t k = n; k < n + kSlack && ok; ++k) ok = CHECK_EQ(got[k], kCanary);
      }
}

// An output pointer that is not 32/64-byte aligned must work (the kernels use unaligned stores).
TEST(philox_fill_unaligned_output) {
  std::vector<uint32_t> want(1001), buf(1001 + 1);
  darex::cpu::philox_fill_scalar(5, 7, 1001, want.data());
  darex::cpu::philox_fill(5, 7, 1001, buf.data() + 1);
  CHECK(std::memcmp(want.data(), buf.data() + 1, want.size() * sizeof(uint32_t)) == 0);
}

// The packed-bit helpers of the storage formats, against bit-by-bit definitions.
TEST(bitpack_helpers) {
  CHECK_EQ(darex::packed_row_bytes(0), int64_t(0));
  CHECK_EQ(darex::packed_row_bytes(1), int64_t(1));
  CHECK_EQ(darex::packed_row_bytes(8), int64_t(1));
  CHECK_EQ(darex::packed_row_bytes(9), int64_t(2));
  CHECK_EQ(int(darex::padding_bits(8)), 0);
  CHECK_EQ(int(darex::padding_bits(16)), 0);
  CHECK_EQ(int(darex::padding_bits(3)), 0xF8);
  CHECK_EQ(int(darex::padding_bits(15)), 0x80);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (int round = 0; round < 64; ++round) {
    int pop = 0, low = -1;
    std::vector<int> bits;
    for (int j = 0; j < 64; ++j)
      if ((x >> j) & 1u) {
        ++pop;
        if (low < 0) low = j;
        bits.push_back(j);
      }
    CHECK_EQ(darex::popcount64(x), pop);
    if (x != 0) CHECK_EQ(darex::lowest_bit(x), low);
    std::vector<int> seen;
    darex::for_each_set_bit(x, [&](int j) { seen.push_back(j); });
    CHECK_EQ(seen.size(), bits.size());
    for (size_t k = 0; k < seen.size() && k < bits.size(); ++k) CHECK_EQ(seen[k], bits[k]);
    x = x * 0xBF58476D1CE4E5B9ull + 0x94D049BB133111EBull;
  }
  // load_bits: little-endian over the available bytes, missing bytes read as zero.
  const uint8_t bytes[8] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF};
  CHECK_EQ(darex::load_bits(bytes, 8), uint64_t(0xEFCDAB8967452301ull));
  CHECK_EQ(darex::load_bits(bytes, 3), uint64_t(0x452301ull));
  CHECK_EQ(darex::load_bits(bytes, 0), uint64_t(0));
}

// The CUDA kernels' row tracking against plain division: rows of length 1..9 and a long one,
// starts before the tensor (-3..-1), steps smaller and larger than a row, row ends inside a
// group of 4.
TEST(row_cursor_matches_division) {
  const auto floor_div = [](int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
  for (int64_t len : {1, 2, 3, 4, 5, 7, 9, 1000003}) {
    for (int64_t i0 = -3; i0 < 40; ++i0) {
      for (int64_t step : {0, 1, 4, 6, 128, 1024, 4 * 256 * 132 * 6}) {
        darex::RowCursor c = darex::RowCursor::at(i0, len);
        const darex::RowStep s = darex::RowStep::of(step, len);
        for (int k = 0; k < 50; ++k) {
          const int64_t at = i0 + k * step;
          CHECK_EQ(c.row, floor_div(at, len));
          CHECK_EQ(c.col, at - floor_div(at, len) * len);
          int64_t rows[4];
          c.group_rows(rows);
          for (int w = 0; w < 4; ++w)
            if (at + w >= 0) CHECK_EQ(rows[w], (at + w) / len);
          c.advance(s);
        }
      }
    }
  }
  darex::RowCursor none = darex::RowCursor::at(17, 0);  // no rows: stays at row 0
  none.advance(darex::RowStep::of(4096, 0));
  int64_t rows[4];
  none.group_rows(rows);
  CHECK_EQ(none.row, 0);
  CHECK_EQ(rows[3], 0);
}

// Mask spec v2's draws in bulk (every ISA path, see the ctest entries) equal skip_block's words.
TEST(philox_fill_stripe_matches_skip_block) {
  std::vector<uint32_t> got(700);
  for (uint64_t seed : {0ull, 77ull, 0xdeadbeefcafef00dull})
    for (uint64_t stripe : {0ull, 5ull, (1ull << 33) + 3})
      for (uint64_t first : {0ull, 1ull, 3ull, 4ull, 130ull, 1021ull})
        for (int64_t n : {1, 5, 64, 128, 129, 700}) {
          darex::cpu::philox_fill_stripe(seed, stripe, first, n, got.data());
          for (int64_t k = 0; k < n; ++k) {
            const uint64_t d = first + static_cast<uint64_t>(k);
            CHECK_EQ(got[k], darex::skip_block(seed, stripe, static_cast<uint32_t>(d >> 2)).v[d & 3]);
          }
        }
}

int main() { return darex_test::run_all(); }
