// Which CPU kernels run (isa.h).
#include "isa.h"

#include <c10/util/Exception.h>

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace vqfast::cpu {
namespace {

// VQFAST_CPU_PORTABLE: unset or 0 -> false, 1 -> true, anything else raises.
bool portable_forced() {
  const char* v = std::getenv("VQFAST_CPU_PORTABLE");
  if (v == nullptr || std::strcmp(v, "0") == 0) return false;
  TORCH_CHECK_VALUE(std::strcmp(v, "1") == 0, "VQFAST_CPU_PORTABLE must be 0 or 1, got '", v, "'");
  return true;
}

bool cpu_has_avx512_set() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
         __builtin_cpu_supports("bmi2");
}

// VQFAST_CPU_AMX: unset or 1 -> true, 0 -> false, anything else raises.
bool amx_allowed() {
  const char* v = std::getenv("VQFAST_CPU_AMX");
  if (v == nullptr || std::strcmp(v, "1") == 0) return true;
  TORCH_CHECK_VALUE(std::strcmp(v, "0") == 0, "VQFAST_CPU_AMX must be 0 or 1, got '", v, "'");
  return false;
}

// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (EDX bit 24); then Linux must grant the
// tile data (XFEATURE 18) to the process (arch_prctl ARCH_REQ_XCOMP_PERM).
bool cpu_has_amx_tiles() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d >> 22 & 1u) || !(d >> 24 & 1u)) return false;
#ifdef SYS_arch_prctl
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

}  // namespace

bool use_avx512() {
  static const bool ok = !portable_forced() && cpu_has_avx512_set();  // the env is checked on every CPU
  return ok;
}

bool cpu_has_bf16_dot() {
  static const bool ok = use_avx512() && __builtin_cpu_supports("avx512bf16");
  return ok;
}

bool use_amx() {
  static const bool ok = amx_allowed() && cpu_has_bf16_dot() && cpu_has_amx_tiles();
  return ok;
}

}  // namespace vqfast::cpu
