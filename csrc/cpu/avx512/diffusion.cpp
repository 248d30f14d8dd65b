// The AVX-512 build of ../diffusion.cpp (isa.h).
#define VQFAST_AVX512 1
#include "../diffusion.cpp"
