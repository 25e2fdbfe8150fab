// CPU instruction-set detection (see isa.h).
#include "isa.h"

#include <cstdlib>
#include <string>

namespace darex::cpu {
namespace {

Isa detect_isa() {
#if DAREX_X86_INTRINSICS
  __builtin_cpu_init();
  const char* env = std::getenv("DAREX_CPU_ISA");  // force a narrower path (tests, benchmarks)
  const std::string want = env ? env : "";
  if (want == "scalar") return Isa::kScalar;
  if (want != "avx2" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2")) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

const Isa kIsa = detect_isa();

}  // namespace

Isa active_isa() { return kIsa; }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace darex::cpu
