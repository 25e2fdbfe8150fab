// CPU instruction sets: which vector path runs (picked once at load time from the running CPU,
// isa.cpp), and the scaffolding that compiles one loop file per instruction set and calls the
// copy for the running CPU. DAREX_CPU_ISA=avx2|scalar in the environment forces a narrower path
// (tests, benchmarks); every path gives the same bits.
//
// Two uses, both in a kernel .cpp:
//  - first include of the file, so the GCC 12 workaround below precedes every intrinsic header;
//  - after the includes the loops need, at global scope, with DAREX_ISA_SPANS naming a loop file:
//      #define DAREX_ISA_SPANS "prune_spans.inc"
//      #include "isa.h"
//    compiles that file into darex::cpu::(anonymous)::isa_{base,avx2,avx512}; DAREX_ISA_CALL(fn,
//    args...) then calls fn of the running ISA (DAREX_ISA_CALL_RESULT(out, fn, args...) keeps
//    its result). This part has no include guard on purpose.
#ifndef DAREX_CPU_ISA_H
#define DAREX_CPU_ISA_H

// GCC 12's AVX-512 intrinsic headers trip -Wuninitialized on their own `__Y` temporaries
// (GCC bug 105593, fixed in 12.3); the warning is about the header, not our code.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// Functions with x86 target attributes and intrinsics (GCC and clang).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DAREX_X86_INTRINSICS 1
#else
#define DAREX_X86_INTRINSICS 0
#endif

// Whole loop files recompiled per ISA with `#pragma GCC target` (GCC only; elsewhere the
// baseline copy alone).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DAREX_ISA_REGIONS 1
#else
#define DAREX_ISA_REGIONS 0
#endif

namespace darex::cpu {

enum class Isa { kScalar, kAvx2, kAvx512 };

// The instruction set of the CPU paths, chosen once at load time.
Isa active_isa();

// "avx512", "avx2" or "scalar".
const char* isa_name(Isa isa);

}  // namespace darex::cpu

#if DAREX_ISA_REGIONS
#define DAREX_ISA_CALL(FN, ...)                                                 \
  do {                                                                          \
    switch (::darex::cpu::active_isa()) {                                       \
      case ::darex::cpu::Isa::kAvx512: isa_avx512::FN(__VA_ARGS__); break;     \
      case ::darex::cpu::Isa::kAvx2: isa_avx2::FN(__VA_ARGS__); break;         \
      default: isa_base::FN(__VA_ARGS__);                                       \
    }                                                                           \
  } while (0)
// The same, storing FN's result in OUT.
#define DAREX_ISA_CALL_RESULT(OUT, FN, ...)                                            \
  do {                                                                                 \
    switch (::darex::cpu::active_isa()) {                                              \
      case ::darex::cpu::Isa::kAvx512: (OUT) = isa_avx512::FN(__VA_ARGS__); break;    \
      case ::darex::cpu::Isa::kAvx2: (OUT) = isa_avx2::FN(__VA_ARGS__); break;        \
      default: (OUT) = isa_base::FN(__VA_ARGS__);                                      \
    }                                                                                  \
  } while (0)
#else
#define DAREX_ISA_CALL(FN, ...) isa_base::FN(__VA_ARGS__)
#define DAREX_ISA_CALL_RESULT(OUT, FN, ...) ((OUT) = isa_base::FN(__VA_ARGS__))
#endif

#endif  // DAREX_CPU_ISA_H

#ifdef DAREX_ISA_SPANS
// Internal linkage: loop files of different kernels may share helper names.
namespace darex::cpu {
namespace {
// DAREX_SPANS_AVX512 tells a loop file which copy it is in (GCC does not define __AVX512BW__ and
// friends inside a `#pragma GCC target` region), for the few loops written with intrinsics.
namespace isa_base {
#define DAREX_SPANS_AVX512 0
#include DAREX_ISA_SPANS
#undef DAREX_SPANS_AVX512
}  // namespace isa_base
#if DAREX_ISA_REGIONS
namespace isa_avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define DAREX_SPANS_AVX512 0
#include DAREX_ISA_SPANS
#undef DAREX_SPANS_AVX512
#pragma GCC pop_options
}  // namespace isa_avx2
namespace isa_avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")
#define DAREX_SPANS_AVX512 1
#include DAREX_ISA_SPANS
#undef DAREX_SPANS_AVX512
#pragma GCC pop_options
}  // namespace isa_avx512
#endif
}  // namespace
}  // namespace darex::cpu
#undef DAREX_ISA_SPANS
#endif
