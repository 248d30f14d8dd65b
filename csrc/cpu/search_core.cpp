// Exact nearest-code search core: see search_core.h for the method.
#include "search_core.h"

#include "search_amx.h"

#include "vqfast/argmin.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace vqfast::cpu {
namespace {

constexpr float kFloatMax = std::numeric_limits<float>::max();
constexpr int kMaxCandidates = 16;  // per row; more (duplicates, degenerate rows) -> full re-rank

// ---- micro-kernels: C[kMR][kNR] = dots of kMR rows with one packed code panel ----
// Each also returns a bit per row whose tile holds a code that may still win
// (lower bound <= the row's best upper bound), so only those rows are scanned.

// The panel's score terms (score = bias + scale * dot, err = ea + |x| eb) and the rows' state.
struct Epilogue {
  const float *bias, *scale, *ea, *eb;  // [kNR] each, for this panel
  const float* xn;                      // [kMR] |x| of the rows (rounded up)
  const float* thr;                     // [kMR] best upper bound of the rows so far
};

// a: the micro-panel of rows packed k-major ([d][kMR] fp32, or [dp/2][kMR] bf16 pairs),
// so a tile reads one contiguous stream; b: one code panel ([d][kNR] or [dp/2][kNR][2]).
using MicroF32 = uint32_t (*)(const float* a, const float* b, int64_t d, const Epilogue& ep, float* c);

uint32_t rows_to_scan_portable(const Epilogue& ep, const float* c) {
  uint32_t need = 0;
  for (int64_t i = 0; i < kMR; ++i) {
    float m = kFloatMax;
#pragma omp simd reduction(min : m)
    for (int64_t j = 0; j < kNR; ++j)
      m = std::min(m, (ep.bias[j] + ep.scale[j] * c[i * kNR + j]) - (ep.ea[j] + ep.xn[i] * ep.eb[j]));
    if (m <= ep.thr[i]) need |= 1u << i;
  }
  return need;
}

uint32_t micro_f32_portable(const float* a, const float* b, int64_t d, const Epilogue& ep, float* c) {
  float acc[kMR][kNR] = {};
  for (int64_t k = 0; k < d; ++k) {
    const float* bk = b + k * kNR;
    for (int64_t i = 0; i < kMR; ++i) {
      const float ai = a[k * kMR + i];
#pragma omp simd
      for (int64_t j = 0; j < kNR; ++j) acc[i][j] += ai * bk[j];
    }
  }
  std::memcpy(c, acc, sizeof(acc));
  return rows_to_scan_portable(ep, c);
}

// Stores the accumulators and flags the rows with a possible winner, in registers.
__attribute__((target("avx512f,fma"))) inline uint32_t store_and_flag(__m512 (&acc)[kMR][4], const Epilogue& ep,
                                                                        float* c) {
  __m512 bias[4], scale[4], ea[4], eb[4];
  for (int j = 0; j < 4; ++j) {
    bias[j] = _mm512_loadu_ps(ep.bias + 16 * j), scale[j] = _mm512_loadu_ps(ep.scale + 16 * j);
    ea[j] = _mm512_loadu_ps(ep.ea + 16 * j), eb[j] = _mm512_loadu_ps(ep.eb + 16 * j);
  }
  uint32_t need = 0;
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i) {
    const __m512 xn = _mm512_set1_ps(ep.xn[i]), thr = _mm512_set1_ps(ep.thr[i]);
    __mmask16 m = 0;
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      _mm512_storeu_ps(c + i * kNR + 16 * j, acc[i][j]);
      const __m512 lo = _mm512_sub_ps(_mm512_fmadd_ps(scale[j], acc[i][j], bias[j]), _mm512_fmadd_ps(xn, eb[j], ea[j]));
      m |= _mm512_cmp_ps_mask(lo, thr, _CMP_LE_OQ);
    }
    if (m) need |= 1u << i;
  }
  return need;
}

__attribute__((target("avx512f,fma"))) uint32_t micro_f32_avx512(const float* a, const float* b, int64_t d,
                                                                   const Epilogue& ep, float* c) {
  __m512 acc[kMR][4];
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < d; ++k) {
    const float* ak = a + k * kMR;
    const float* bk = b + k * kNR;
    const __m512 b0 = _mm512_loadu_ps(bk), b1 = _mm512_loadu_ps(bk + 16);
    const __m512 b2 = _mm512_loadu_ps(bk + 32), b3 = _mm512_loadu_ps(bk + 48);
#define VQ_ROW(i)                                      \
  {                                                    \
    const __m512 av = _mm512_set1_ps(ak[i]);           \
    acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);    \
    acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);    \
    acc[i][2] = _mm512_fmadd_ps(av, b2, acc[i][2]);    \
    acc[i][3] = _mm512_fmadd_ps(av, b3, acc[i][3]);    \
  }
    VQ_ROW(0) VQ_ROW(1) VQ_ROW(2) VQ_ROW(3) VQ_ROW(4) VQ_ROW(5)
#undef VQ_ROW
  }
  return store_and_flag(acc, ep, c);
}

// vdpbf16ps: each fp32 lane accumulates a pair of bf16 products (exact in fp32), so
// the rounding bound is the fp32 one. B is packed as [dp/2][kNR][2].
__attribute__((target("avx512f,avx512bw,avx512bf16,fma"))) uint32_t micro_bf16_avx512(
    const int32_t* a, const at::BFloat16* b, int64_t dp, const Epilogue& ep, float* c) {
  __m512 acc[kMR][4];
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t steps = dp / 2;
  for (int64_t k = 0; k < steps; ++k) {
    const int32_t* ak = a + k * kMR;
    const at::BFloat16* bk = b + k * 2 * kNR;
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bk), b1 = (__m512bh)_mm512_loadu_si512(bk + 32);
    const __m512bh b2 = (__m512bh)_mm512_loadu_si512(bk + 64), b3 = (__m512bh)_mm512_loadu_si512(bk + 96);
#define VQ_ROW(i)                                           \
  {                                                         \
    const __m512bh av = (__m512bh)_mm512_set1_epi32(ak[i]); \
    acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);        \
    acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);        \
    acc[i][2] = _mm512_dpbf16_ps(acc[i][2], av, b2);        \
    acc[i][3] = _mm512_dpbf16_ps(acc[i][3], av, b3);        \
  }
    VQ_ROW(0) VQ_ROW(1) VQ_ROW(2) VQ_ROW(3) VQ_ROW(4) VQ_ROW(5)
#undef VQ_ROW
  }
  return store_and_flag(acc, ep, c);
}

// The AVX-512 kernels are compiled for their target whatever the build flags and run when
// use_avx512() (isa.h).
MicroF32 micro_f32() { return use_avx512() ? micro_f32_avx512 : micro_f32_portable; }

// ---- exact float64 distances (the re-rank), as vqfast/reference/nearest_code.py ----

double exact_distance(const Codebook& cb, const float* x, double x_norm, int64_t k) {
  const float* c = cb.p_raw + k * cb.d;
  if (cb.metric == kL2) {
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < cb.d; ++i) {
      const double t = static_cast<double>(x[i]) - static_cast<double>(c[i]);
      s += t * t;
    }
    return s;
  }
  double dot = 0.0, cc = 0.0;
#pragma omp simd reduction(+ : dot, cc)
  for (int64_t i = 0; i < cb.d; ++i) {
    dot += static_cast<double>(x[i]) * c[i];
    cc += static_cast<double>(c[i]) * c[i];
  }
  return 1.0 - dot / (std::max(x_norm, 1e-12) * std::max(std::sqrt(cc), 1e-12));
}

// Running state of one row: best upper bound and the codes whose lower bound is below it.
struct RowState {
  float best_hi;
  int n;
  bool overflow;
  float lo[kMaxCandidates];
  int32_t k[kMaxCandidates];
};

// Appends code k0 + j of a flagged tile row to the row's candidates (lo: its lower bound).
inline bool add_candidate(RowState& st, float lo, int64_t code) {
  if (st.n == kMaxCandidates) {
    st.overflow = true;
    return false;
  }
  st.lo[st.n] = lo;
  st.k[st.n] = static_cast<int32_t>(code);
  ++st.n;
  return true;
}

// Tightens the row's best upper bound to hi_min and drops candidates that can no longer win.
inline void tighten(RowState& st, float hi_min) {
  if (!(hi_min < st.best_hi)) return;
  st.best_hi = hi_min;
  int w = 0;
  for (int q = 0; q < st.n; ++q)
    if (st.lo[q] <= hi_min) st.lo[w] = st.lo[q], st.k[w] = st.k[q], ++w;
  st.n = w;
}

// Scores of one flagged micro-tile row (kNR codes from k0): first tighten the row's
// best upper bound with the tile's, then keep every code whose lower bound is below it.
void scan_tile_row_portable(const Codebook& cb, const float* dots, int64_t k0, float xn, RowState& st) {
  const float *bias = cb.p_bias + k0, *scale = cb.p_scale + k0, *ea = cb.p_ea + k0, *eb = cb.p_eb + k0;
  alignas(64) float lo[kNR];
  float hi_min = kFloatMax;
#pragma omp simd reduction(min : hi_min)
  for (int64_t j = 0; j < kNR; ++j) {
    const float s = bias[j] + scale[j] * dots[j], e = ea[j] + xn * eb[j];
    lo[j] = s - e;
    hi_min = std::min(hi_min, s + e);
  }
  tighten(st, hi_min);
  for (int64_t j = 0; j < kNR; ++j)
    if (lo[j] <= st.best_hi && !add_candidate(st, lo[j], k0 + j)) return;
}

// The same in AVX-512: the bounds of 64 codes in 4 registers, the candidates as a bit
// mask (usually one or two bits), so a scan costs a few dozen instructions.
__attribute__((target("avx512f,fma"))) void scan_tile_row_avx512(const Codebook& cb, const float* dots,
                                                                   int64_t k0, float xn, RowState& st) {
  const __m512 vxn = _mm512_set1_ps(xn);
  alignas(64) float lo[kNR];
  __m512 hmin = _mm512_set1_ps(kFloatMax);
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const int64_t o = k0 + 16 * j;
    const __m512 s = _mm512_fmadd_ps(_mm512_loadu_ps(cb.p_scale + o), _mm512_loadu_ps(dots + 16 * j),
                                     _mm512_loadu_ps(cb.p_bias + o));
    const __m512 e = _mm512_fmadd_ps(vxn, _mm512_loadu_ps(cb.p_eb + o), _mm512_loadu_ps(cb.p_ea + o));
    _mm512_store_ps(lo + 16 * j, _mm512_sub_ps(s, e));
    hmin = _mm512_min_ps(hmin, _mm512_add_ps(s, e));
  }
  tighten(st, _mm512_reduce_min_ps(hmin));
  const __m512 thr = _mm512_set1_ps(st.best_hi);
  uint64_t mask = 0;
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j)
    mask |= static_cast<uint64_t>(_mm512_cmp_ps_mask(_mm512_load_ps(lo + 16 * j), thr, _CMP_LE_OQ)) << (16 * j);
  for (; mask != 0; mask &= mask - 1) {
    const int j = __builtin_ctzll(mask);
    if (!add_candidate(st, lo[j], k0 + j)) return;
  }
}

// Picks the exact winner among candidates (or all codes): lowest float64 distance,
// ties to the lowest index; NaN distances never win (as the reference).
void finish_row(const Codebook& cb, const float* x, double x_norm, const RowState& st, int64_t* idx, float* dist) {
  double best = std::numeric_limits<double>::infinity();
  int64_t best_k = 0;
  auto consider = [&](int64_t k) {
    const double dk = exact_distance(cb, x, x_norm, k);
    if (vqfast::better(dk, k, best, best_k)) best = dk, best_k = k;
  };
  if (st.overflow || st.n == 0) {
    for (int64_t k = 0; k < cb.K; ++k) consider(k);
  } else {
    for (int q = 0; q < st.n; ++q) consider(st.k[q]);
  }
  *idx = best_k;
  *dist = static_cast<float>(best);
}

void finish_rows(const Codebook& cb, const Rows& rows, int64_t n, const double* x_norm, const RowState* state,
                 int64_t* idx, float* dist) {
  for (int64_t r = 0; r < n; ++r) {
    // A NaN/inf row (its fp64 squared norm is not finite) gets idx 0, dist NaN. Not `!finite[r]
    // && !overflow`: its -inf lower bounds can pass the fp32 filter and overflow the candidates.
    if (!vqfast::finite_value(x_norm[r])) {
      idx[r] = 0;
      dist[r] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    finish_row(cb, rows.row32(r), x_norm[r], state[r], idx + r, dist + r);
  }
}

// bf16 codes [K, d] (contiguous) as 32-bit pairs [Kp/kNR][depth/2][kNR][2], zero past d and
// for codes that are not valid (depth: d rounded up to even, or to 32 for the AMX tiles).
at::Tensor pack_bf16_pairs(const at::Tensor& codes, const std::vector<uint8_t>& valid, int64_t depth) {
  const int64_t d = codes.size(1), panels = static_cast<int64_t>(valid.size()) / kNR, pairs = depth / 2;
  const uint16_t* sv = reinterpret_cast<const uint16_t*>(codes.data_ptr<at::BFloat16>());
  auto out = at::empty({panels, pairs, kNR, 2}, at::TensorOptions().dtype(at::kBFloat16));
  uint32_t* packed = reinterpret_cast<uint32_t*>(out.data_ptr<at::BFloat16>());
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t j = 0; j < kNR; ++j) {
        const int64_t k = p * kNR + j;
        uint32_t* dst = packed + p * pairs * kNR + j;
        for (int64_t q = 0; q < pairs; ++q) {
          const int64_t i = 2 * q;
          const uint32_t lo = valid[k] && i < d ? sv[k * d + i] : 0u;
          const uint32_t hi = valid[k] && i + 1 < d ? sv[k * d + i + 1] : 0u;
          dst[q * kNR] = lo | hi << 16;
        }
      }
  });
  return out;
}

}  // namespace

Codebook prepare_codebook(const at::Tensor& codebook, int64_t metric, bool bf16) {
  Codebook cb;
  cb.K = codebook.size(0);
  cb.d = codebook.size(1);
  cb.Kp = (cb.K + kNR - 1) / kNR * kNR;
  cb.dp = (cb.d + 1) / 2 * 2;
  cb.metric = metric;
  cb.bf16 = bf16;
  cb.raw = codebook.to(at::kFloat).contiguous();
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  cb.bias = at::empty({cb.Kp}, f32);
  cb.scale = at::empty({cb.Kp}, f32);
  cb.err_a = at::empty({cb.Kp}, f32);
  cb.err_b = at::empty({cb.Kp}, f32);
  cb.amx = use_amx();
  cb.err_b_amx = cb.amx ? at::empty({cb.Kp}, f32) : cb.err_b;
  const int64_t K = cb.K, d = cb.d;
  const float* raw = cb.raw.data_ptr<float>();
  float *bias = cb.bias.data_ptr<float>(), *scale = cb.scale.data_ptr<float>();
  float *ea = cb.err_a.data_ptr<float>(), *eb = cb.err_b.data_ptr<float>();
  // gamma_n = n u / (1 - n u) bounds a length-n fp32 dot product's relative error
  // (Higham, Thm 3.4); n = d + 8 also covers the bias, scale and score roundings, the
  // factor 2 covers the bound's own rounding. Denormals flushed by vdpbf16ps add at
  // most d * 2^-126 per unit of |x| |c|: the 2^-100 term.
  const double u = std::ldexp(1.0, -24), n = static_cast<double>(d + 8);
  const double gamma = 2.0 * n * u / (1.0 - n * u);
  // The AMX pass of fp32/fp16 values dots x~, c~ rounded to bf16 (unit roundoff ub = 2^-8):
  // |x.c - x~.c~| <= (2 ub + ub^2) |x| |c|, and its fp32 sum is off by gamma |x~| |c~| <=
  // gamma (1 + ub)^2 |x| |c|. bf16 codes and rows are exact: the fp32 bound alone.
  const double ub = std::ldexp(1.0, -8), round_b = bf16 ? 0.0 : 2.0 * ub + ub * ub;
  const double rel_amx = round_b + gamma * (1.0 + ub) * (1.0 + ub);
  float* eba = cb.err_b_amx.data_ptr<float>();
  std::vector<uint8_t> valid(cb.Kp, 0);
  std::vector<double> norms(cb.Kp, 0.0);
  // Codes (and below, panels) in parallel: this O(K d) set-up runs on every op call.
  at::parallel_for(0, cb.Kp, kNR, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      double cc = 0.0;
      if (k < K) {
        const float* c = raw + k * d;
#pragma omp simd reduction(+ : cc)
        for (int64_t i = 0; i < d; ++i) cc += static_cast<double>(c[i]) * c[i];
      }
      // A NaN/inf element makes cc NaN/inf (finite fp32 squares cannot overflow fp64).
      valid[k] = k < K && vqfast::finite_value(cc);
      if (!valid[k]) {  // padding and non-finite codes are never candidates
        bias[k] = std::numeric_limits<float>::infinity(), scale[k] = 0.f, ea[k] = 0.f, eb[k] = 0.f;
        if (cb.amx) eba[k] = 0.f;
        continue;
      }
      const double cn = std::sqrt(cc), tiny = std::ldexp(1.0, -100) * (1.0 + cn);
      norms[k] = cn;
      if (metric == kL2) {
        bias[k] = static_cast<float>(cc);
        scale[k] = -2.f;
        ea[k] = static_cast<float>(gamma * cc + tiny) * 1.0001f;
        eb[k] = static_cast<float>(2.0 * gamma * cn + tiny) * 1.0001f;
        if (cb.amx) eba[k] = static_cast<float>(2.0 * rel_amx * cn + tiny) * 1.0001f;
      } else {
        const double inv = 1.0 / std::max(cn, 1e-12);
        bias[k] = 0.f;
        scale[k] = static_cast<float>(-inv);
        ea[k] = static_cast<float>(tiny * inv);
        eb[k] = static_cast<float>((gamma * cn + tiny) * inv) * 1.0001f;
        if (cb.amx) eba[k] = static_cast<float>((rel_amx * cn + tiny) * inv) * 1.0001f;
      }
    }
  });
  cb.max_norm = *std::max_element(norms.begin(), norms.end());
  const int64_t panels = cb.Kp / kNR;
  if (!bf16) {
    cb.packed = at::empty({panels, d, kNR}, f32);
    float* packed = cb.packed.data_ptr<float>();
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t j = 0; j < kNR; ++j) {
          const int64_t k = p * kNR + j;
          float* dst = packed + p * d * kNR + j;
          if (valid[k]) {
            for (int64_t i = 0; i < d; ++i) dst[i * kNR] = raw[k * d + i];
          } else {
            for (int64_t i = 0; i < d; ++i) dst[i * kNR] = 0.f;
          }
        }
    });
  } else {  // bf16 pairs copied as 32-bit words: [panel][dp/2][kNR][2], odd d padded with a zero
    cb.packed = pack_bf16_pairs(codebook.contiguous(), valid, cb.dp);
  }
  if (cb.amx) {  // the same at the tile depth of 32; fp32/fp16 codes rounded to nearest even
    cb.da = (d + 31) / 32 * 32;
    cb.packed_amx = pack_bf16_pairs(codebook.to(at::kBFloat16).contiguous(), valid, cb.da);
    cb.p_packed_amx = cb.packed_amx.data_ptr();
  }
  cb.p_raw = cb.raw.data_ptr<float>();
  cb.p_bias = bias, cb.p_scale = scale, cb.p_ea = ea, cb.p_eb = eb, cb.p_eb_amx = eba;
  cb.p_packed = cb.packed.data_ptr();
  return cb;
}

namespace {

// Per-thread scratch of search_rows, reused across calls (no allocation per block).
struct Scratch {
  std::vector<RowState> state;
  std::vector<double> x_norm;
  std::vector<float> xn32, a32;
  std::vector<int32_t> abf;
  std::vector<uint16_t> tbf;  // the AMX pass's rows: bf16 [rows rounded up to 16][da]
  std::vector<uint8_t> finite;
};

using ScanRow = void (*)(const Codebook&, const float*, int64_t, float, RowState&);

// What the AMX pass hands each finite row to: its scan with the AMX bound.
struct AmxScan {
  Codebook bound;  // the codebook with p_eb = p_eb_amx
  const float* xn32;
  const uint8_t* finite;
  RowState* state;
  ScanRow scan;
};

void amx_visit(void* ctx, int64_t r, const float* dots, int64_t k0) {
  auto& s = *static_cast<AmxScan*>(ctx);
  if (s.finite[r]) s.scan(s.bound, dots, k0, s.xn32[r], s.state[r]);
}

}  // namespace

void search_rows(const Codebook& cb, const Rows& rows, int64_t* idx, float* dist) {
  const int64_t n = rows.n, d = cb.d;
  if (n == 0) return;
  static thread_local Scratch sc;
  sc.state.resize(n);
  sc.x_norm.resize(n);
  sc.xn32.assign(n + kMR, 0.f);  // padded: micro-tiles read kMR entries
  sc.finite.resize(n);
  RowState* state = sc.state.data();
  // Scores, dots and bounds are below (|x| + |c|)^2: past 2^124 the fp32 pass could overflow.
  const double huge = std::ldexp(1.0, 62);
  for (int64_t r = 0; r < n; ++r) {
    const float* x = rows.row32(r);
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < d; ++i) s += static_cast<double>(x[i]) * x[i];
    sc.x_norm[r] = std::sqrt(s);
    const bool finite = vqfast::finite_value(s), overflow = finite && sc.x_norm[r] + cb.max_norm > huge;
    sc.finite[r] = finite && !overflow;  // not scanned: non-finite or re-ranked in full
    sc.xn32[r] = overflow ? 0.f : static_cast<float>(sc.x_norm[r]) * 1.0001f;  // rounded up: the bound stays a bound
    state[r].best_hi = kFloatMax;
    state[r].n = 0;
    state[r].overflow = overflow;
  }
  const auto scan = use_avx512() ? scan_tile_row_avx512 : scan_tile_row_portable;
  const float* xn32 = sc.xn32.data();
  const uint8_t* finite = sc.finite.data();
  if (cb.amx) {
    sc.tbf.assign((n + 15) / 16 * 16 * cb.da, 0);
    rows_to_bf16(cb, rows, n, sc.tbf.data());
    AmxScan visit{cb, xn32, finite, state, scan};
    visit.bound.p_eb = cb.p_eb_amx;
    amx_dots(cb, sc.tbf.data(), n, amx_visit, &visit);
    // Rounded fp32 values widen the bound; should it leave many rows with more candidates than a
    // row keeps (codes close relative to their norms), the fp32 pass redoes the block.
    int64_t full = 0;
    for (int64_t r = 0; r < n; ++r) full += finite[r] && state[r].overflow;
    if (cb.bf16 || full * 8 <= n) {
      finish_rows(cb, rows, n, sc.x_norm.data(), state, idx, dist);
      return;
    }
    for (int64_t r = 0; r < n; ++r)
      if (finite[r]) state[r].best_hi = kFloatMax, state[r].n = 0, state[r].overflow = false;
  }
  // Rows packed k-major per micro-panel (zeros past the last row: only the last tile has them).
  const int64_t tiles = (n + kMR - 1) / kMR, steps = cb.bf16 ? cb.dp / 2 : d;
  if (cb.bf16) {
    sc.abf.resize(tiles * steps * kMR);
    std::fill(sc.abf.begin() + (tiles - 1) * steps * kMR, sc.abf.end(), 0);
  } else {
    sc.a32.resize(tiles * steps * kMR);
    std::fill(sc.a32.begin() + (tiles - 1) * steps * kMR, sc.a32.end(), 0.f);
  }
  int32_t* abf = sc.abf.data();
  float* a32 = sc.a32.data();
  for (int64_t r = 0; r < n; ++r) {
    const int64_t t = r / kMR, i = r % kMR;
    if (cb.bf16) {
      const int32_t* src = reinterpret_cast<const int32_t*>(rows.rowbf(r));
      int32_t* dst = abf + t * steps * kMR + i;
      for (int64_t k = 0; k < steps; ++k) dst[k * kMR] = src[k];
    } else {
      const float* src = rows.row32(r);
      float* dst = a32 + t * steps * kMR + i;
      for (int64_t k = 0; k < steps; ++k) dst[k * kMR] = src[k];
    }
  }
  alignas(64) float tile[kMR * kNR];
  const MicroF32 mf = micro_f32();
  const int64_t panels = cb.Kp / kNR;
  // One code panel stays in cache while the packed rows stream past it.
  for (int64_t p = 0; p < panels; ++p) {
    Epilogue ep{cb.p_bias + p * kNR, cb.p_scale + p * kNR, cb.p_ea + p * kNR, cb.p_eb + p * kNR, nullptr, nullptr};
    const float* b32 = static_cast<const float*>(cb.p_packed) + p * d * kNR;
    const at::BFloat16* bbf = static_cast<const at::BFloat16*>(cb.p_packed) + p * cb.dp * kNR;
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = t * kMR, rn = std::min(kMR, n - r0);
      float thr[kMR];
      for (int64_t i = 0; i < kMR; ++i)  // rows past n and non-finite rows are never scanned
        thr[i] = i < rn && finite[r0 + i] ? state[r0 + i].best_hi : -kFloatMax;
      ep.xn = xn32 + r0;
      ep.thr = thr;
      const uint32_t need = cb.bf16 ? micro_bf16_avx512(abf + t * steps * kMR, bbf, cb.dp, ep, tile)
                                    : mf(a32 + t * steps * kMR, b32, d, ep, tile);
      for (int64_t i = 0; i < rn; ++i)
        if (need >> i & 1u) scan(cb, tile + i * kNR, p * kNR, xn32[r0 + i], state[r0 + i]);
    }
  }
  finish_rows(cb, rows, n, sc.x_norm.data(), state, idx, dist);
}

}  // namespace vqfast::cpu

namespace vqfast::cpu {

int64_t block_rows(int64_t n) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t per_thread = (n + threads - 1) / threads;
  return std::max(kMR, std::min(kBlockRows, (per_thread + kMR - 1) / kMR * kMR));
}

namespace {

// Copies rows (given by index) of src into fp32 and, for a bf16 codebook, padded bf16 buffers.
template <typename RowOf>
Rows copy_rows(const at::Tensor& src, RowOf row_of, int64_t rn, const Codebook& cb, RowBuffers& buf,
               bool need32, bool needbf) {
  const int64_t d = cb.d;
  Rows out;
  out.n = rn;
  if (need32) {
    buf.x32.resize(rn * d);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "vqfast_copy_rows", [&] {
      const scalar_t* s = src.data_ptr<scalar_t>();
      for (int64_t r = 0; r < rn; ++r) {
        const scalar_t* srow = s + row_of(r) * d;
        float* dst = buf.x32.data() + r * d;
        for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<float>(srow[i]);
      }
    });
    out.x32 = buf.x32.data();
    out.ldx = d;
  }
  if (needbf) {
    buf.xbf.assign(rn * cb.dp, at::BFloat16(0.f));
    const at::BFloat16* s = src.data_ptr<at::BFloat16>();
    for (int64_t r = 0; r < rn; ++r) std::memcpy(buf.xbf.data() + r * cb.dp, s + row_of(r) * d, d * sizeof(at::BFloat16));
    out.xbf = buf.xbf.data();
    out.ldb = cb.dp;
  }
  return out;
}

}  // namespace

Rows load_rows(const at::Tensor& src, int64_t r0, int64_t rn, const Codebook& cb, RowBuffers& buf) {
  const bool is32 = src.scalar_type() == at::kFloat;
  const bool bf_direct = cb.bf16 && cb.dp == cb.d;
  Rows out = copy_rows(src, [r0](int64_t r) { return r0 + r; }, rn, cb, buf, !is32, cb.bf16 && !bf_direct);
  if (is32) {
    out.x32 = src.data_ptr<float>() + r0 * cb.d;
    out.ldx = cb.d;
  }
  if (bf_direct) {
    out.xbf = src.data_ptr<at::BFloat16>() + r0 * cb.d;
    out.ldb = cb.d;
  }
  return out;
}


}  // namespace vqfast::cpu
