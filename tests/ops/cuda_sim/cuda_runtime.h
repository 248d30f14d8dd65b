// A CPU stand-in for the parts of the CUDA runtime that csrc/cuda/*.cu use, so tests
// can RUN those kernels on a machine without a GPU (tests/ops/test_cuda_kernels_sim.py).
// A launch runs the blocks one after another; the threads of a block are real threads,
// __syncthreads is a barrier, __shfl_xor_sync exchanges values within a warp of 32.
// __shared__ variables become statics: shared by the block's threads, reused by the
// next block (as on a GPU, nothing carries over that a kernel may rely on).
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;
using cudaStream_t = void*;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "cuda_sim error"; }

struct dim3 {
  unsigned x = 0, y = 0, z = 0;
};

namespace vqfast_sim {

struct Block {
  explicit Block(unsigned threads)
      : all(threads), exchange(threads), votes(threads) {
    for (unsigned w = 0; w < (threads + 31) / 32; ++w) warps.push_back(std::make_unique<std::barrier<>>(32));
  }
  std::barrier<> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<uint64_t> exchange;
  std::vector<int> votes;
};

inline thread_local dim3 thread_idx, block_idx;
inline thread_local Block* block = nullptr;

inline void sync() { block->all.arrive_and_wait(); }

template <typename T>
T shfl_xor(T v, int offset) {
  const unsigned t = thread_idx.x, w = t / 32;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  block->exchange[t] = bits;
  block->warps[w]->arrive_and_wait();
  bits = block->exchange[w * 32 + ((t % 32) ^ offset)];
  block->warps[w]->arrive_and_wait();
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

inline int sync_or(int p) {
  block->votes[thread_idx.x] = p;
  sync();
  int any = 0;
  for (int v : block->votes) any |= v != 0;
  sync();
  return any;
}

template <typename Kernel, typename... Args>
void launch(Kernel kernel, unsigned grid, unsigned threads, Args... args) {
  for (unsigned b = 0; b < grid; ++b) {
    Block blk(threads);
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        thread_idx.x = t;
        block_idx.x = b;
        block = &blk;
        kernel(args...);
      });
    for (auto& th : pool) th.join();
  }
}

}  // namespace vqfast_sim

#define threadIdx (::vqfast_sim::thread_idx)
#define blockIdx (::vqfast_sim::block_idx)
#define __syncthreads() ::vqfast_sim::sync()
#define __syncthreads_or(p) ::vqfast_sim::sync_or(p)
template <typename T>
T __shfl_xor_sync(unsigned, T v, int offset) {
  return ::vqfast_sim::shfl_xor(v, offset);
}
