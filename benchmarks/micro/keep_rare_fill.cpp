// Why bf16 prune_ at p = 0.99 stays near a full read-modify-write on the CPU: the memory patterns
// of the keep-rare prune_ paths (csrc/cpu/prune_kernel.cpp), timed alone and together, without
// the mask walk. Kept positions are i.i.d. Bernoulli(keep) per element, the law of both specs.
//
//   g++ -O3 -march=native -fopenmp benchmarks/micro/keep_rare_fill.cpp -o /tmp/keep_rare_fill
//   OMP_NUM_THREADS=2 /tmp/keep_rare_fill 2     # bf16-sized elements; 4 for fp32
//
// Patterns, per stripe of 4096 elements (one task's stripes in order):
//   nt_zero     stream zeros over every line (the write-only floor)
//   read_kept   load the kept elements only, their lines prefetched 4 stripes ahead
//   nt_stage    read the kept elements into an L1 stage, stream the stage out whole (prune_'s
//               streaming path, used where few lines hold a kept element)
//   plain_runs  memset the runs between kept elements, rewrite each kept element (prune_'s
//               in-place path)
//   rmw_all     a vector read-modify-write of every line (mul_)
//   clzero_all  CLZERO every line (AMD only: zeroes a line without reading it)
//   clz_mixed   kept lines rewritten in place, the other lines CLZERO'd
// Rounds are interleaved and the best of each pattern is printed; nt_zero + read_kept is what
// nt_stage would cost if reads and streaming stores overlapped freely.
#include <immintrin.h>

#ifndef __AVX512F__
#error "needs AVX-512: build with -march=native on an AVX-512 machine"
#endif

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr int64_t kStripe = 4096;
constexpr int64_t kNumel = int64_t{1} << 26;
constexpr double kKeep = 0.01;

struct Setup {
  int esz;
  char* x;
  std::vector<std::vector<int32_t>> kept;  // per stripe, ascending
};

void stream_line(char* dst, const char* src) {
  _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), _mm512_load_si512(src));
}

template <typename Body>
double timed(const Setup& su, const Body& body) {
  std::memset(su.x, 1, static_cast<size_t>(kNumel * su.esz));
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel
  {
    const int64_t stripes = kNumel / kStripe;
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    body(stripes * t / nt, stripes * (t + 1) / nt);
    _mm_sfence();
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

double run(const Setup& su, int pattern) {
  const int64_t bytes = kStripe * su.esz;
  const int esz = su.esz;
  return timed(su, [&](int64_t sb, int64_t se) {
    alignas(64) static thread_local char stage[kStripe * 8];
    std::memset(stage, 0, sizeof(stage));
    volatile char sink = 0;
    for (int64_t s = sb; s < se; ++s) {
      char* xs = su.x + s * bytes;
      const auto& k = su.kept[static_cast<size_t>(s)];
      if ((pattern == 1 || pattern == 2 || pattern == 6) && s + 4 < se)
        for (int32_t j : su.kept[static_cast<size_t>(s + 4)]) __builtin_prefetch(su.x + (s + 4) * bytes + j * esz, 0, 2);
      switch (pattern) {
        case 0:
          for (int64_t l = 0; l < bytes; l += 64) stream_line(xs + l, stage + l);
          break;
        case 1: {
          char acc = 0;
          for (int32_t j : k) acc = static_cast<char>(acc + xs[j * esz]);
          sink = static_cast<char>(sink + acc);
          break;
        }
        case 2:
          for (int32_t j : k) std::memcpy(stage + j * esz, xs + j * esz, static_cast<size_t>(esz));
          for (int64_t l = 0; l < bytes; l += 64) stream_line(xs + l, stage + l);
          for (int32_t j : k) std::memset(stage + j * esz, 0, static_cast<size_t>(esz));
          break;
        case 3: {
          int64_t prev = 0;
          for (int32_t j : k) {
            std::memset(xs + prev * esz, 0, static_cast<size_t>((j - prev) * esz));
            xs[j * esz] = static_cast<char>(xs[j * esz] + 1);
            prev = j + 1;
          }
          std::memset(xs + prev * esz, 0, static_cast<size_t>((kStripe - prev) * esz));
          break;
        }
#ifdef __CLZERO__
        case 5:
          for (int64_t l = 0; l < bytes; l += 64) _mm_clzero(xs + l);
          break;
        case 6: {
          size_t q = 0;
          const int64_t per = 64 / esz;
          for (int64_t l = 0; l < bytes; l += 64) {
            const int64_t first = l / esz;
            if (q < k.size() && k[q] < first + per) {
              uint64_t keep_bytes = 0;
              for (; q < k.size() && k[q] < first + per; ++q)
                keep_bytes |= ((uint64_t{1} << esz) - 1) << ((k[q] - first) * esz);
              const __m512i v = _mm512_load_si512(xs + l);
              _mm512_store_si512(reinterpret_cast<__m512i*>(xs + l), _mm512_maskz_mov_epi8(keep_bytes, _mm512_add_epi8(v, v)));
            } else {
              _mm_clzero(xs + l);
            }
          }
          break;
        }
#endif
        default:
          for (int64_t l = 0; l < bytes; l += 64) {
            const __m512i v = _mm512_load_si512(xs + l);
            _mm512_store_si512(reinterpret_cast<__m512i*>(xs + l), _mm512_add_epi16(v, v));
          }
      }
    }
  });
}

}  // namespace

int main(int argc, char** argv) {
  Setup su;
  su.esz = argc > 1 ? std::atoi(argv[1]) : 2;
  if (su.esz != 2 && su.esz != 4 && su.esz != 8) {
    std::fprintf(stderr, "element size must be 2, 4 or 8 bytes\n");
    return 2;
  }
  su.x = static_cast<char*>(std::aligned_alloc(64, static_cast<size_t>(kNumel * su.esz)));
  std::mt19937_64 gen(1);
  std::bernoulli_distribution keep(kKeep);
  su.kept.resize(static_cast<size_t>(kNumel / kStripe));
  int64_t kept_lines = 0;
  for (auto& k : su.kept) {
    int64_t last_line = -1;
    for (int32_t i = 0; i < kStripe; ++i) {
      if (!keep(gen)) continue;
      k.push_back(i);
      const int64_t line = i * su.esz / 64;
      kept_lines += line != last_line;
      last_line = line;
    }
  }
  const char* names[] = {"nt_zero", "read_kept", "nt_stage", "plain_runs", "rmw_all", "clzero_all", "clz_mixed"};
#ifdef __CLZERO__
  constexpr int kPatterns = 7;
#else
  constexpr int kPatterns = 5;
#endif
  double best[7];
  std::fill(best, best + 7, 1e300);
  for (int round = 0; round < 8; ++round)
    for (int p = 0; p < kPatterns; ++p) best[p] = std::min(best[p], run(su, p));
  std::printf("numel 2^26, element %d bytes, keep %.2f, lines holding a kept element %.1f%%, threads %d\n",
              su.esz, kKeep, 100.0 * kept_lines / (kNumel * su.esz / 64), omp_get_max_threads());
  for (int p = 0; p < kPatterns; ++p) std::printf("%-11s %7.2f ms\n", names[p], best[p]);
  std::printf("%-11s %7.2f ms\n", "nt_zero + read_kept", best[0] + best[1]);
  std::free(su.x);
  return 0;
}
