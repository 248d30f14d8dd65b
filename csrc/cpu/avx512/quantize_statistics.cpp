// The AVX-512 build of ../quantize_statistics.cpp (isa.h).
#define VQFAST_AVX512 1
#include "../quantize_statistics.cpp"
