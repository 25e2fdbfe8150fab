// Framework-free tests of mask spec v2 (common/skip_mask.h): the known answers of
// docs/mask_spec.md "Version 2" (also checked by the Python twin), the gap search against a
// linear scan, and the walk's independence of where a piece starts.
#include <cstdint>
#include <vector>

#include "check.h"
#include "common/skip_mask.h"

namespace {

std::vector<uint32_t> table_of(double p) {
  std::vector<uint32_t> t(darex::kSkipStripe);
  darex::skip_table_build(p, t.data());
  return t;
}

std::vector<int32_t> stripe_positions(uint64_t seed, uint64_t stripe, const uint32_t* table) {
  std::vector<int32_t> out;
  darex::SkipWalker walk(seed, stripe, table);
  for (int32_t r = walk.next(); r < darex::kSkipStripe; r = walk.next()) out.push_back(r);
  return out;
}

}  // namespace

TEST(skip_table_known_answers) {
  const auto t99 = table_of(0.99);
  CHECK_EQ(t99[0], 42949672u);  // floor(2^32 * 0.01)
  CHECK_EQ(t99[1], 85469849u);
  CHECK_EQ(t99[2], 127564823u);
  CHECK_EQ(t99[99], 2722870360u);
  CHECK_EQ(t99[4095], 0xFFFFFFFFu);
  const auto t50 = table_of(0.5);
  CHECK_EQ(t50[0], 2147483648u);
  CHECK_EQ(t50[1], 3221225472u);
  CHECK_EQ(t50[2], 3758096384u);
  const auto t30 = table_of(0.3);
  CHECK_EQ(t30[0], 1288490188u);
  CHECK_EQ(t30[1], 2190433320u);
  const auto tiny = table_of(1e-6);
  CHECK_EQ(tiny[0], 4294u);
  CHECK_EQ(tiny[4095], 17556215u);
  for (double p : {0.0, 1.0}) {  // rho = 0: no rare element anywhere
    const auto t = table_of(p);
    CHECK_EQ(t[4095], 0u);
  }
  CHECK(darex::skip_rare_is_keep(0.5));
  CHECK(!darex::skip_rare_is_keep(0.49999));
}

TEST(skip_table_is_symmetric_in_rho_and_nondecreasing) {
  const auto a = table_of(0.25), b = table_of(0.75);
  for (int g = 0; g < darex::kSkipStripe; ++g) {
    CHECK_EQ(a[g], b[g]);
    if (g > 0) CHECK(a[g] >= a[g - 1]);
  }
}

TEST(skip_first_positions_known_answers) {
  const auto t99 = table_of(0.99);
  const auto s0 = stripe_positions(0, 0, t99.data());
  const int32_t want0[] = {19, 27, 469, 570, 774, 856, 1137, 1196};
  CHECK_EQ(s0.size(), size_t(36));
  for (int k = 0; k < 8; ++k) CHECK_EQ(s0[k], want0[k]);
  const auto s5 = stripe_positions(0xdeadbeefcafef00dull, 5, t99.data());
  const int32_t want5[] = {20596 - 5 * 4096, 20672 - 5 * 4096, 20703 - 5 * 4096, 20713 - 5 * 4096};
  for (int k = 0; k < 4; ++k) CHECK_EQ(s5[k], want5[k]);
  const auto t30 = table_of(0.3);
  const auto s1 = stripe_positions(1, 0, t30.data());
  const int32_t want1[] = {0, 1, 2, 3, 5, 7, 9, 10};
  for (int k = 0; k < 8; ++k) CHECK_EQ(s1[k], want1[k]);
}

TEST(skip_gap_is_the_smallest_entry_above_the_word) {
  for (double p : {0.5, 0.99, 0.3, 1e-4, 1e-6}) {
    const auto t = table_of(p);
    uint32_t w = 0x9e3779b9u;
    for (int k = 0; k < 4000; ++k) {
      w = w * 1664525u + 1013904223u;
      const int32_t limit = 1 + static_cast<int32_t>(w % darex::kSkipStripe);
      int32_t want = limit;
      for (int32_t g = 0; g < limit; ++g)
        if (w < t[g]) {
          want = g;
          break;
        }
      CHECK_EQ(darex::skip_gap(t.data(), limit, w), want);
      CHECK_EQ(darex::skip_gap(t.data(), limit, t[limit - 1]), limit);  // w == entry: not below it
    }
  }
}

TEST(skip_indexed_gap_is_the_same_gap) {
  std::vector<uint16_t> index(darex::kSkipIndexSize);
  for (double p : {0.5, 0.99, 0.3, 0.7, 1e-4, 1e-6, 1 - 1e-6, 0.0}) {
    const auto t = table_of(p);
    darex::skip_index_build(t.data(), index.data());
    uint32_t w = 0x243f6a88u;
    for (int k = 0; k < 20000; ++k) {
      w = w * 1664525u + 1013904223u;
      const int32_t limit = 1 + static_cast<int32_t>((w >> 7) % darex::kSkipStripe);
      for (uint32_t word : {w, t[limit - 1], t[limit - 1] - 1u, t[0], ~0u, 0u})
        CHECK_EQ(darex::skip_gap_indexed(t.data(), index.data(), limit, word), darex::skip_gap(t.data(), limit, word));
    }
    darex::SkipWalker a(9, 4, t.data()), b(9, 4, t.data(), index.data());
    for (int32_t r = a.next(); ; r = a.next()) {
      CHECK_EQ(b.next(), r);
      if (r == darex::kSkipStripe) break;
    }
  }
}

TEST(skip_seek_and_slow_path_agree_with_the_walk) {
  const auto t = table_of(0.97);
  const uint64_t seed = 77, stripe = (1ull << 33) + 3;  // the high counter word matters
  const auto all = stripe_positions(seed, stripe, t.data());
  CHECK(all != stripe_positions(seed, 3, t.data()));
  CHECK(all != stripe_positions(seed + 1, stripe, t.data()));
  for (int32_t start : {0, 1, 100, 2047, 4095}) {
    darex::SkipWalker walk(seed, stripe, t.data());
    int32_t want = darex::kSkipStripe;
    for (int32_t r : all)
      if (r >= start) {
        want = r;
        break;
      }
    CHECK_EQ(walk.seek(start), want);
  }
  for (int32_t local = 0; local < darex::kSkipStripe; local += 37) {
    bool rare = false;
    for (int32_t r : all) rare = rare || r == local;
    const uint64_t index = (stripe << darex::kSkipStripeLog2) + static_cast<uint64_t>(local);
    CHECK_EQ(darex::skip_is_kept(seed, index, t.data(), true), rare);
    CHECK_EQ(darex::skip_is_kept(seed, index, t.data(), false), !rare);
  }
}

int main() { return darex_test::run_all(); }
