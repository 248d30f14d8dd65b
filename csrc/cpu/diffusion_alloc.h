// Output buffers of the diffusion backward kernels (csrc/cpu/diffusion.cpp). A fresh
// [B, L, K] gradient from at::empty costs more than computing it on this kind of VM: the
// kernel's first touch page-faults every 4 KB page (B=8 L=256 K=16384 fp32: 46 of the
// backward's 62 ms). Large buffers are therefore 2 MB-aligned with MADV_HUGEPAGE (one fault
// per 2 MB; 134 MB first touch ~9 ms instead of ~45 ms here) and, once their tensor dies,
// kept in a small pool for the next gradient of the same size (no faults at all in a
// training loop). The pool holds at most kMaxBlocks buffers and kMaxCachedBytes.
// Under AddressSanitizer (VQFAST_SANITIZE=address) a pooled block is poisoned while it waits in
// the pool, and so are the bytes past the tensor in a block in use (its slack): a kernel that
// reads or writes them is reported, as it would be past the end of a plain allocation.
#pragma once
#include <ATen/ATen.h>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#else
#define ASAN_POISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#define ASAN_UNPOISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#endif

#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

namespace vqfast {
namespace diffusion_alloc {

constexpr size_t kHuge = size_t{2} << 20;             // transparent huge page size
constexpr size_t kMinBytes = size_t{4} << 20;         // smaller outputs: plain at::empty
constexpr size_t kMaxCachedBytes = size_t{1} << 30;   // freed bytes kept for reuse, at most
constexpr size_t kMaxBlocks = 4;

struct Pool {
  std::mutex mu;
  std::vector<std::pair<void*, size_t>> blocks;
  size_t bytes = 0;
};

// Never destroyed: tensors may be freed during static destruction at exit.
inline Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

inline void release(void* ptr, size_t bytes) {
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mu);
    if (p.blocks.size() < kMaxBlocks && p.bytes + bytes <= kMaxCachedBytes) {
      ASAN_POISON_MEMORY_REGION(ptr, bytes);
      p.blocks.emplace_back(ptr, bytes);
      p.bytes += bytes;
      return;
    }
  }
  ASAN_UNPOISON_MEMORY_REGION(ptr, bytes);
  std::free(ptr);
}

inline void* acquire(size_t bytes) {
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mu);
    for (size_t i = 0; i < p.blocks.size(); ++i) {
      if (p.blocks[i].second != bytes) continue;
      void* ptr = p.blocks[i].first;
      p.blocks.erase(p.blocks.begin() + static_cast<std::ptrdiff_t>(i));
      p.bytes -= bytes;
      return ptr;
    }
  }
  void* ptr = std::aligned_alloc(kHuge, bytes);
  TORCH_CHECK(ptr != nullptr, "diffusion_cpu: out of memory allocating ", bytes, " bytes");
  madvise(ptr, bytes, MADV_HUGEPAGE);  // advice only: without huge pages it is a plain buffer
  return ptr;
}

// An uninitialized contiguous tensor like at::empty(sizes, options) (CPU).
inline at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const size_t need = static_cast<size_t>(numel) * at::elementSize(at::typeMetaToScalarType(options.dtype()));
  if (need < kMinBytes) return at::empty(sizes, options);
  const size_t bytes = (need + kHuge - 1) / kHuge * kHuge;
  void* ptr = acquire(bytes);
  ASAN_UNPOISON_MEMORY_REGION(ptr, need);
  ASAN_POISON_MEMORY_REGION(static_cast<char*>(ptr) + need, bytes - need);  // the slack
  return at::from_blob(ptr, sizes, [bytes](void* q) { release(q, bytes); }, options);
}

}  // namespace diffusion_alloc
}  // namespace vqfast
