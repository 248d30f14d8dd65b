// The AVX-512 build of ../sampling.cpp (isa.h).
#define VQFAST_AVX512 1
#include "../sampling.cpp"
