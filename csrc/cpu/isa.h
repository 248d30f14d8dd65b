// Run-time choice between the two builds of the CPU kernels with AVX-512 code paths.
//
// The files that hold such kernels (sampling.cpp, diffusion.cpp, ema.cpp,
// quantize_statistics.cpp, ceilings.cpp) are compiled twice, whatever the build flags:
//  - as they are: namespace vqfast::generic, VQFAST_AVX512 0, portable code only;
//  - through avx512/<file>.cpp: namespace vqfast::avx512, VQFAST_AVX512 1, and every
//    function defined after VQFAST_ISA_TARGET_BEGIN compiled for AVX-512 (F/BW/DQ/VL) with
//    AVX2, FMA, F16C and BMI2. Loops the compiler vectorizes use 256-bit vectors, as -march=native
//    tunes them on Intel AVX-512 CPUs, so their float sums (hence the results) do not depend on
//    the build flags.
// The generic build registers each op as IsaPick, which calls the avx512 build when
// use_avx512() (the CPU has those features and VQFAST_CPU_PORTABLE is not 1), else its own.
// The nearest-code search (search_core.cpp) picks its AVX-512 micro-kernels by the same test.
//
// A file built twice includes every system, ATen and shared header before
// VQFAST_ISA_TARGET_BEGIN: an inline function first defined after it would be compiled for
// AVX-512 in one build and could be the copy the linker keeps for both
// (tests/test_build.py checks the order).
#pragma once
#include <utility>

#ifndef VQFAST_AVX512
#define VQFAST_AVX512 0
#endif

#if VQFAST_AVX512
#define VQFAST_ISA avx512
#define VQFAST_ISA_TARGET_BEGIN \
  _Pragma("GCC push_options")   \
  _Pragma("GCC target(\"avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt,prefer-vector-width=256\")")
#define VQFAST_ISA_TARGET_END _Pragma("GCC pop_options")
#else
#define VQFAST_ISA generic
#define VQFAST_ISA_TARGET_BEGIN
#define VQFAST_ISA_TARGET_END
#endif

namespace vqfast::cpu {

// The CPU has AVX-512 F/BW/DQ/VL, AVX2, FMA, F16C and BMI2, and VQFAST_CPU_PORTABLE is unset
// or 0 (1 forces the portable kernels; any other value raises ValueError). Checked once.
bool use_avx512();

// use_avx512() and the CPU has AVX512-BF16 (the bf16 search micro-kernel).
bool cpu_has_bf16_dot();

// cpu_has_bf16_dot(), the CPU has AMX-TILE and AMX-BF16, the kernel grants this process the
// tile data state, and VQFAST_CPU_AMX is unset or 1 (0 turns the AMX search pass off; any
// other value raises ValueError). Checked once.
bool use_amx();

template <auto kGeneric, auto kAvx512>
struct IsaPick;

// An op whose two builds have the same signature, as one function that calls the build
// use_avx512() picks.
template <class R, class... A, R (*kGeneric)(A...), R (*kAvx512)(A...)>
struct IsaPick<kGeneric, kAvx512> {
  static R call(A... a) { return use_avx512() ? kAvx512(std::forward<A>(a)...) : kGeneric(std::forward<A>(a)...); }
};

}  // namespace vqfast::cpu

// In the generic build: declares the avx512 build of op `fn` (same type) ...
#define VQFAST_AVX512_DECLARE(fn) \
  namespace vqfast::avx512 {      \
  decltype(::vqfast::generic::fn) fn; \
  }
// ... and names the op that dispatches between the two, for m.impl.
#define VQFAST_ISA_PICK(fn) (&::vqfast::cpu::IsaPick<&::vqfast::generic::fn, &::vqfast::avx512::fn>::call)
