// The AVX-512 build of ../ema.cpp (isa.h).
#define VQFAST_AVX512 1
#include "../ema.cpp"
