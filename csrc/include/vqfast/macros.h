// Shared by the CPU (.cpp) and CUDA (.cu) builds: per-element math is written once
// in headers whose functions are __host__ __device__ under nvcc.
#pragma once

#if defined(__CUDACC__)
#define VQFAST_HD __host__ __device__ __forceinline__
#else
#define VQFAST_HD inline
#endif
