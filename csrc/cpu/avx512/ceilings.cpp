// The AVX-512 build of ../ceilings.cpp (isa.h).
#define VQFAST_AVX512 1
#include "../ceilings.cpp"
