// Which CPU kernels run (isa.h).
#include "isa.h"

#include <c10/util/Exception.h>

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

}  // namespace

bool use_avx512() {
  static const bool ok = !portable_forced() && cpu_has_avx512_set();  // the env is checked on every CPU
  return ok;
}

bool cpu_has_bf16_dot() {
  static const bool ok = use_avx512() && __builtin_cpu_supports("avx512bf16");
  return ok;
}

}  // namespace vqfast::cpu
