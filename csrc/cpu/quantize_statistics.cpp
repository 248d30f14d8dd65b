// quantize_statistics on the CPU: the nearest-code search of nearest_code / quantize and
// ema_statistics' counts and sums of the same batch, with x read from memory once.
//
// With at least as many row chunks (ema_accumulate.h) as threads, each thread takes
// whole chunks and adds every searched block's rows into its chunk sums at once (still in
// L1/L2). With fewer, rows go in superblocks (a few MiB of x): all threads search a
// superblock, then add its rows (now in L3) into the chunk sums, split by columns.
// Chunks and summation order are those
// of ema_statistics (ema_accumulate.h), so counts and sums equal
// ema_statistics(x, idx, K) bit for bit, for every thread count.
// Built twice, portable and AVX-512 (the row sums; the search picks its own kernels), one
// picked at run time (isa.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "isa.h"
#include "search_core.h"

VQFAST_ISA_TARGET_BEGIN
#include "ema_accumulate.h"

namespace vqfast::VQFAST_ISA {
using namespace ::vqfast::cpu;  // the search (search_core.h)
namespace {

// Bytes of x per superblock: small enough to stay in L3 between its search and its
// statistics, large enough that the threads' barriers and uneven ends cost little.
constexpr int64_t kSuperblockBytes = 8 << 20;
constexpr int64_t kParallelAddElements = 1 << 14;  // below this a superblock's rows are added serially

}  // namespace

// x [N, d] (fp32/fp16/bf16), codebook [K, d] (raw). Returns z_q [N, d] (x's dtype) and
// sq_err [N] fp64 as quantize_cpu when `gather` (else empty), idx [N] int64, dist [N]
// fp32 as nearest_code_cpu, counts [K] fp32, sums [K, d] fp32 as ema_statistics_cpu.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_statistics_cpu(
    const at::Tensor& x, const at::Tensor& codebook, int64_t metric, bool gather) {
  check_search_args(x, codebook, metric, "quantize_statistics_cpu");
  auto xc = x.contiguous();
  const int64_t N = xc.size(0), d = xc.size(1), K = codebook.size(0);
  auto idx = at::empty({N}, x.options().dtype(at::kLong));
  auto dist = at::empty({N}, x.options().dtype(at::kFloat));
  auto z_q = gather ? at::empty_like(xc) : at::empty({0}, x.options());
  auto sq_err = at::empty({gather ? N : 0}, x.options().dtype(at::kDouble));
  auto counts = at::zeros({K}, x.options().dtype(at::kFloat));
  auto sums = at::zeros({K, d}, x.options().dtype(at::kFloat));
  if (N == 0) return {z_q, idx, dist, sq_err, counts, sums};
  const Codebook cb = prepare_codebook(codebook, metric, use_bf16(xc, codebook));
  const int64_t threads = at::get_num_threads(), block = block_rows(N), C = ema::stat_chunks(N, K);
  int64_t* ip = idx.data_ptr<int64_t>();
  float* dp = dist.data_ptr<float>();
  double* ep = gather ? sq_err.data_ptr<double>() : nullptr;
  float* sp = sums.data_ptr<float>();
  // Searches rows [r0, r0 + rn) (one block) with the caller's buffers.
  auto search = [&](int64_t r0, int64_t rn, RowBuffers& buf) {
    const Rows rows = load_rows(xc, r0, rn, cb, buf);
    search_rows(cb, rows, ip + r0, dp + r0);
    if (gather) gather_codes(cb, ip + r0, rn, z_q, r0, nullptr, &rows, ep, dp + r0);
  };
  auto add = [&](int64_t r0, int64_t r1, int64_t c0, int64_t w, float* acc) {
    switch (xc.scalar_type()) {
      case at::kFloat: ema::add_rows(xc.data_ptr<float>(), ip, r0, r1, d, c0, w, acc); break;
      case at::kHalf: ema::add_rows(xc.data_ptr<at::Half>(), ip, r0, r1, d, c0, w, acc); break;
      default: ema::add_rows(xc.data_ptr<at::BFloat16>(), ip, r0, r1, d, c0, w, acc); break;
    }
  };
  if (threads == 1 || (C >= threads && (C % threads == 0 || C >= 3 * threads))) {
    // Enough chunks for every thread: each takes whole chunks and adds every block's rows
    // right after searching them (still in L1/L2); no barrier until the partials are added.
    std::vector<float> partials((C - 1) * K * d);
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      RowBuffers buf;
      for (int64_t c = c0; c < c1; ++c) {
        float* acc = c == 0 ? sp : partials.data() + (c - 1) * K * d;
        const int64_t r1 = ema::chunk_begin(N, C, c + 1);
        for (int64_t r0 = ema::chunk_begin(N, C, c); r0 < r1; r0 += block) {
          const int64_t rn = std::min(block, r1 - r0);
          search(r0, rn, buf);
          add(r0, r0 + rn, 0, d, acc);
        }
      }
    });
    ema::add_partials(sp, partials.data(), C - 1, K, d, K * d >= kParallelAddElements);
  } else {
    // Fewer chunks than threads: superblocks searched by all threads, then added by columns.
    const int64_t step = block * threads;
    const int64_t super = std::max<int64_t>(1, kSuperblockBytes / (step * std::max<int64_t>(d, 1) * xc.element_size())) * step;
    const int64_t col_block = ema::column_block(d, 1, threads);
    const int64_t n_cols = (d + col_block - 1) / col_block;
    std::vector<float> partial(C > 1 ? K * d : 0);
    for (int64_t c = 0; c < C; ++c) {
      float* acc = c == 0 ? sp : partial.data();
      if (c > 0) std::fill(partial.begin(), partial.end(), 0.0f);
      const int64_t r1 = ema::chunk_begin(N, C, c + 1);
      for (int64_t s0 = ema::chunk_begin(N, C, c); s0 < r1; s0 += super) {
        const int64_t s1 = std::min(r1, s0 + super);
        at::parallel_for(0, (s1 - s0 + block - 1) / block, 1, [&](int64_t b0, int64_t b1) {
          RowBuffers buf;
          for (int64_t b = b0; b < b1; ++b) search(s0 + b * block, std::min(block, s1 - s0 - b * block), buf);
        });
        const int64_t grain = (s1 - s0) * d < kParallelAddElements ? n_cols : 1;
        at::parallel_for(0, n_cols, grain, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) add(s0, s1, t * col_block, std::min(col_block, d - t * col_block), acc);
        });
      }
      if (c > 0) ema::add_partials(sp, partial.data(), 1, K, d, K * d >= kParallelAddElements);
    }
  }
  float* cp = counts.data_ptr<float>();
  std::vector<int64_t> n(K, 0);
  for (int64_t r = 0; r < N; ++r) ++n[ip[r]];
  for (int64_t k = 0; k < K; ++k) cp[k] = static_cast<float>(n[k]);
  return {z_q, idx, dist, sq_err, counts, sums};
}

}  // namespace vqfast::VQFAST_ISA
VQFAST_ISA_TARGET_END

#if !VQFAST_AVX512
VQFAST_AVX512_DECLARE(quantize_statistics_cpu)

TORCH_LIBRARY_FRAGMENT(vqfast_cpu, m) {
  m.def("quantize_statistics(Tensor x, Tensor codebook, int metric, bool gather) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vqfast_cpu, CPU, m) {
  m.impl("quantize_statistics", VQFAST_ISA_PICK(quantize_statistics_cpu));
}
#endif
