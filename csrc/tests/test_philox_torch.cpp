// The mask spec says at::philox_engine(seed, 0, b) computes the same block as darex::philox_block:
// key = seed, counter = (b lo, b hi, 0, 0). This keeps our Philox honest against torch's own.
#include <ATen/core/PhiloxRNGEngine.h>

#include "check.h"
#include "common/philox.h"

TEST(philox_block_matches_torch_engine) {
  const uint64_t seeds[] = {0, 1, 42, 0x9e3779b97f4a7c15ull, 0xffffffff00000000ull, ~0ull};
  const uint64_t blocks[] = {0, 1, 2, 255, (1ull << 32) - 1, 1ull << 32, (1ull << 32) + 5,
                             0x0123456789abcdefull, 0x3fffffffffffffffull};
  for (uint64_t seed : seeds)
    for (uint64_t b : blocks) {
      at::philox_engine eng(seed, 0, b);
      // Eight draws: block b, then the engine's own increment to b + 1 (carry included).
      for (uint64_t blk = b; blk < b + 2; ++blk) {
        const darex::Philox4 ours = darex::philox_block(seed, blk);
        for (int w = 0; w < 4; ++w) CHECK_EQ(eng(), ours.v[w]);
      }
    }
}

int main() { return darex_test::run_all(); }
