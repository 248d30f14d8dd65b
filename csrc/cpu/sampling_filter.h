// Top-k / top-p filtered categorical draws on the CPU without a dense filtered row.
//
// One pass over the row (`collect`) finds the row max, the NaN/+inf flag and the block maxima,
// and keeps as candidates every finite x above the running max minus a gap: a superset of
// {x >= m - gap}. Top-p masses are the exact integers of vqfast/reference/sampling.py
// `_nucleus`: q = lse::term(x, m) = trunc(exp_f32(x - m) 2^40), Z their int64 sum (for top-p
// alone, `row_mass`: a second look at the blocks within 28 of the max, in cache), and an id is
// kept while float64(mass before it) < top_p * float64(Z). When the candidates hold the answer
// (>= k values, or float64(mass) >= top_p * float64(Z)) the top-k / nucleus boundary is found
// among them by a bisection on the order-preserving int32 keys that drops the half it rules
// out after each step; otherwise a second pass collects every finite value. The gap adapts to the
// previous row (a guess only: the tokens never depend on it). The kept ids (ascending)
// are drawn by `sparse_categorical`, which consumes the same words and returns the same
// token as `categorical` on the dense row with -inf outside the kept set
// (vqfast/random.py "Categorical draws"). Include only from files compiled
// with -ffp-contract=off (setup.py).
#pragma once
#include <bit>
#include <functional>
#include <utility>

#include "sampling_row.h"

namespace vqfast {
namespace VQFAST_ISA {  // isa.h: compiled once per build
namespace sampling {

// A sparse row: n (id ascending, value) pairs; every other id is -inf. Capacity V + 16.
struct SparseRow {
  std::vector<int32_t> id;
  std::vector<float> x;
  std::vector<int64_t> q;  // top-p masses lse::term(x, m) (set by `masses`)
  int64_t n = 0;
  std::vector<uint16_t> masks;  // collect: candidate lanes of each 16 values
  void reserve(int64_t V) {
    if (static_cast<int64_t>(x.size()) < V + 16) {
      id.resize(V + 16);
      x.resize(V + 16);
      q.resize(V + 16);
    }
  }
};

struct Collected {
  float m = -kInf;  // row max
  bool bad = false;  // NaN or +inf, or no finite value
};

inline float key_to_float(int32_t key) { return bits_to_float(static_cast<uint32_t>(key ^ ((key >> 31) & 0x7FFFFFFF))); }

// float32 -> int32 with the same order (no NaN); -0 and +0 get the same key, as they
// compare equal (the reference's ties, broken by id).
inline int32_t order_key(float f) {
  int32_t b = static_cast<int32_t>(float_to_bits(f));
  b = b == INT32_MIN ? 0 : b;
  return b ^ ((b >> 31) & 0x7FFFFFFF);
}

// Appends the values of xb[0..n) that are >= t (with ids v0 + i), in index order, at c
// (the pass without AVX-512).
inline int64_t append_ge(const float* xb, int n, int64_t v0, float t, SparseRow& c, int64_t cnt) {
  int i = 0;
  for (; i < n; ++i) {
    c.x[cnt] = xb[i];
    c.id[cnt] = static_cast<int32_t>(v0 + i);
    cnt += xb[i] >= t;
  }
  return cnt;
}

#if VQFAST_AVX512
// Candidates from the per-16-value masks of a row (collecting inside the pass costs more
// than the pass): only the vectors with a candidate are read again (the row is in cache) and
// packed by register compresses (measured: 0.25-0.3x read-once less than an 8-lane permutation
// table at 375 candidates per 16384 values).
inline int64_t extract(const float* x, int64_t V, const uint16_t* masks, SparseRow& c) {
  const int64_t nv = (V + 15) / 16;
  int64_t cnt = 0;
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t j0 = 0; j0 < nv; j0 += 32) {
    const int64_t nj = std::min<int64_t>(32, nv - j0);
    const __mmask32 live = nj == 32 ? 0xFFFFFFFFu : static_cast<__mmask32>((1u << nj) - 1);
    const __m512i mv = _mm512_maskz_loadu_epi16(live, masks + j0);
    for (uint32_t nz = _mm512_test_epi16_mask(mv, mv); nz; nz &= nz - 1) {
      const int64_t j = j0 + std::countr_zero(nz);
      const unsigned mk = masks[j];
      const __mmask16 k16 = static_cast<__mmask16>(mk);
      const __m512 xv = _mm512_maskz_loadu_ps(k16, x + 16 * j);  // in bounds at the tail
      _mm512_storeu_ps(c.x.data() + cnt, _mm512_maskz_compress_ps(k16, xv));
      _mm512_storeu_si512(c.id.data() + cnt, _mm512_maskz_compress_epi32(
          k16, _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int32_t>(16 * j)))));
      cnt += std::popcount(mk);
    }
  }
  return cnt;
}
#endif

// The pass over x[0..V): block maxima into mb, candidates into c (every x >= t; t = -FLT_MAX:
// every finite x). Bad rows return early (their token is -1 anyway).
inline Collected collect(const float* x, int64_t V, float t, std::vector<float>& mb, SparseRow& c) {
  constexpr int kB = cat::kBlock;
  const int64_t nb = (V + kB - 1) / kB;
  mb.resize(nb);
  c.reserve(V);
  Collected out;
  float m = -kInf;
  int64_t cnt = 0;
#if VQFAST_AVX512
  c.masks.resize((V + 15) / 16 + 32);
  uint16_t* masks = c.masks.data();
  const __m512 vt = _mm512_set1_ps(t), vinf = _mm512_set1_ps(kInf);
#endif
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kB;
    const int n = static_cast<int>(std::min<int64_t>(kB, V - b * kB));
    float bm = -kInf;
#if VQFAST_AVX512
    // One look: max, bad values and the candidate masks (t is known before the pass).
    // No software prefetch: it slowed this loop (A/B in one process).
    __m512 vmax = _mm512_set1_ps(-kInf);
    __mmask16 vbad = 0;
    uint16_t* mk = masks + b * (kB / 16);
    auto look = [&](int i, __m512 xv) {
      vmax = _mm512_max_ps(vmax, xv);
      vbad |= _mm512_cmp_ps_mask(xv, vinf, _CMP_NLT_UQ);  // NaN or +inf
      mk[i / 16] = _mm512_cmp_ps_mask(xv, vt, _CMP_GE_OQ);
    };
    if (n == kB) {  // plain loads: masked ones stall the stream from memory
      for (int i = 0; i < kB; i += 16) look(i, _mm512_loadu_ps(xb + i));
    } else {
      for (int i = 0; i < n; i += 16) look(i, _mm512_mask_loadu_ps(_mm512_set1_ps(-kInf), tail_mask(n - i), xb + i));
    }
    mb[b] = bm = _mm512_reduce_max_ps(vmax);
    if (vbad) {
      out.bad = true;
      return out;
    }
    m = bm > m ? bm : m;
#else
    int bbad = 0;
#pragma omp simd reduction(max : bm) reduction(| : bbad)
    for (int i = 0; i < n; ++i) {
      bm = xb[i] > bm ? xb[i] : bm;
      bbad |= static_cast<int>(!(xb[i] < kInf));  // NaN or +inf
    }
    mb[b] = bm;
    if (bbad) {
      out.bad = true;
      return out;
    }
    if (bm == -kInf) continue;
    m = bm > m ? bm : m;
    if (bm >= t) cnt = append_ge(xb, n, b * kB, t, c, cnt);
#endif
  }
#if VQFAST_AVX512
  cnt = extract(x, V, masks, c);
#endif
  c.n = cnt;
  out.m = m;
  out.bad = m == -kInf;
  return out;
}

// Z of the top-p rule for a good row of max m and block maxima mb: sum_v lse::term(x_v, m),
// exact; blocks whose max is <= m + lse::kZeroBelow add 0 term by term and are skipped.
inline int64_t row_mass(const float* x, int64_t V, float m, const std::vector<float>& mb) {
  constexpr int kB = cat::kBlock;
  int64_t z = 0;
  for (int64_t b = 0; b < static_cast<int64_t>(mb.size()); ++b) {
    const int n = static_cast<int>(std::min<int64_t>(kB, V - b * kB));
    if (mb[b] - m > lse::kZeroBelow) z += terms_block(x + b * kB, n, m);
  }
  return z;
}

// Keeps the entries of w[0..n) (and their masses e, when given) with key >= mid (ge) or
// < mid (!ge), in order; returns their count.
inline int64_t compact(int32_t* w, int64_t* e, int64_t n, int32_t mid, bool ge) {
  int64_t j = 0, i = 0;
#if VQFAST_AVX512
  const __m512i vm = _mm512_set1_epi32(mid);
  for (; i + 16 <= n; i += 16) {
    const __m512i k = _mm512_loadu_si512(w + i);
    const __mmask16 mk = ge ? _mm512_cmpge_epi32_mask(k, vm) : _mm512_cmplt_epi32_mask(k, vm);
    _mm512_storeu_si512(w + j, _mm512_maskz_compress_epi32(mk, k));  // j <= i: never ahead of the reads
    if (e) {  // 8 int64 lanes per half; both halves are read before either store
      const __m512i e0 = _mm512_loadu_si512(e + i), e1 = _mm512_loadu_si512(e + i + 8);
      const __mmask8 m0 = static_cast<__mmask8>(mk), m1 = static_cast<__mmask8>(mk >> 8);
      _mm512_storeu_si512(e + j, _mm512_maskz_compress_epi64(m0, e0));
      _mm512_storeu_si512(e + j + std::popcount(static_cast<unsigned>(m0)), _mm512_maskz_compress_epi64(m1, e1));
    }
    j += std::popcount(static_cast<unsigned>(mk));
  }
#endif
  for (; i < n; ++i) {
    const int32_t k = w[i];
    const int64_t ei = e ? e[i] : 0;
    w[j] = k;
    if (e) e[j] = ei;
    j += (k >= mid) == ge;
  }
  return j;
}

// (min, max) of keys[0..n), n >= 1.
inline std::pair<int32_t, int32_t> key_range(const int32_t* keys, int64_t n) {
  int32_t lo = INT32_MAX, hi = INT32_MIN;
#pragma omp simd reduction(min : lo) reduction(max : hi)
  for (int64_t i = 0; i < n; ++i) {
    lo = keys[i] < lo ? keys[i] : lo;
    hi = keys[i] > hi ? keys[i] : hi;
  }
  return {lo, hi};
}

// The k-th largest of keys[0..n) (1 <= k <= n): bisection on the key value; after each step
// the keys on the side that cannot hold it are dropped. w: scratch.
inline int32_t kth_key(const int32_t* keys, int64_t n, int64_t k, std::vector<int32_t>& w) {
  w.assign(keys, keys + n);
  auto [lo, hi] = key_range(keys, n);
  int64_t above = 0;  // keys > hi
  while (lo < hi && n > 16) {
    const int32_t mid = static_cast<int32_t>(lo + (static_cast<int64_t>(hi) - lo + 1) / 2);
    const int32_t* wp = w.data();
    const int ni = static_cast<int>(n);
    int ge = 0;  // 32-bit lanes (an int64 count makes GCC gather)
#pragma omp simd reduction(+ : ge)
    for (int i = 0; i < ni; ++i) ge += wp[i] >= mid;
    if (above + ge >= k) {
      lo = mid;
      n = compact(w.data(), nullptr, n, mid, true);
    } else {
      hi = mid - 1;
      above += ge;
      n = compact(w.data(), nullptr, n, mid, false);
    }
  }
  if (lo == hi) return lo;
  std::sort(w.begin(), w.begin() + n, std::greater<int32_t>());  // above < k <= above + n
  return w[k - above - 1];
}

// Whether an integer mass reaches the top-p goal: float64(mass) >= goal (round to nearest even).
inline bool reaches(int64_t mass, double goal) { return static_cast<double>(mass) >= goal; }

// The top-p boundary: the largest key K with float64(mass(key >= K)) >= goal among keys /
// masses [0..n) (exact int64 sums), the smallest key when the total stays below goal;
// *above = mass(key > K).
inline int32_t mass_key(const int32_t* keys, const int64_t* q, int64_t n, double goal, std::vector<int32_t>& w,
                        std::vector<int64_t>& wq, int64_t* above_out) {
  w.assign(keys, keys + n);
  wq.assign(q, q + n);
  auto [lo, hi] = key_range(keys, n);
  int64_t above = 0;  // mass of keys > hi
  while (lo < hi && n > 16) {
    const int32_t mid = static_cast<int32_t>(lo + (static_cast<int64_t>(hi) - lo + 1) / 2);
    const int32_t* kp = w.data();
    const int64_t* qp = wq.data();
    const int ni = static_cast<int>(n);
    int64_t ge = 0;
#pragma omp simd reduction(+ : ge)
    for (int i = 0; i < ni; ++i) ge += kp[i] >= mid ? qp[i] : 0;
    if (reaches(above + ge, goal)) {
      lo = mid;
      n = compact(w.data(), wq.data(), n, mid, true);
    } else {
      hi = mid - 1;
      above += ge;
      n = compact(w.data(), wq.data(), n, mid, false);
    }
  }
  if (lo < hi && n > 0) {  // n <= 16 left: walk their distinct keys from the top
    std::vector<std::pair<int32_t, int64_t>> kq(n);
    for (int64_t i = 0; i < n; ++i) kq[i] = {w[i], wq[i]};
    std::sort(kq.begin(), kq.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    int64_t i = 0;
    for (;;) {
      const int32_t key = kq[i].first;
      int64_t ge = 0;
      for (int64_t j = i; j < n && kq[j].first == key; ++j) ge += kq[j].second;
      if (reaches(above + ge, goal) || i + 1 == n || kq[n - 1].first == key) {
        lo = key;  // the boundary, or the smallest key when the total stays below goal
        break;
      }
      above += ge;
      while (kq[i].first == key) ++i;
    }
  }
  *above_out = above;
  return lo;
}

// Candidates c -> kept (in place): every key >= K.
inline void keep_ge(SparseRow& c, const int32_t* keys, int32_t K) {
  int64_t j = 0, i = 0;
#if VQFAST_AVX512
  const __m512i vk = _mm512_set1_epi32(K);
  for (; i + 16 <= c.n; i += 16) {
    const __mmask16 mk = _mm512_cmpge_epi32_mask(_mm512_loadu_si512(keys + i), vk);
    const __m512 xv = _mm512_loadu_ps(c.x.data() + i);
    const __m512i iv = _mm512_loadu_si512(c.id.data() + i);
    _mm512_storeu_ps(c.x.data() + j, _mm512_maskz_compress_ps(mk, xv));  // j <= i
    _mm512_storeu_si512(c.id.data() + j, _mm512_maskz_compress_epi32(mk, iv));
    j += std::popcount(static_cast<unsigned>(mk));
  }
#endif
  for (; i < c.n; ++i) {
    c.x[j] = c.x[i];
    c.id[j] = c.id[i];
    j += keys[i] >= K;
  }
  c.n = j;
}

// Candidates c -> kept (in place): every key > K, then the ties key == K in id order while
// tie(count of ties taken so far) holds.
template <class Tie>
inline void keep_from(SparseRow& c, const int32_t* keys, int32_t K, Tie tie) {
  int64_t j = 0, ties = 0;
  for (int64_t i = 0; i < c.n; ++i) {
    const int32_t q = keys[i];
    const bool keep = q > K || (q == K && tie(ties));
    ties += q == K && keep;
    c.x[j] = c.x[i];
    c.id[j] = c.id[i];
    j += keep;
  }
  c.n = j;
}

struct FilterScratch {
  std::vector<int32_t> keys, w;
  std::vector<int64_t> wq;
};

// Top k (ties: lower id) of candidates c that hold every value >= the k-th largest, in place.
// Returns the k-th largest key (the smallest key when there are <= k candidates).
inline int32_t top_k_of(SparseRow& c, int64_t k, FilterScratch& s) {
  if (c.n <= k) {
    int32_t lo = INT32_MAX;
    for (int64_t i = 0; i < c.n; ++i) lo = std::min(lo, order_key(c.x[i]));
    return lo;
  }
  s.keys.resize(c.n);
  int32_t* ko = s.keys.data();
  const float* xo = c.x.data();
#pragma omp simd
  for (int64_t i = 0; i < c.n; ++i) ko[i] = order_key(xo[i]);
  const int32_t K = kth_key(s.keys.data(), c.n, k, s.w);
  const int32_t* kp = s.keys.data();
  const int n = static_cast<int>(c.n);
  int above = 0, ties = 0;  // 32-bit lanes (an int64 count makes GCC gather)
#pragma omp simd reduction(+ : above, ties)
  for (int i = 0; i < n; ++i) {
    above += kp[i] > K;
    ties += kp[i] == K;
  }
  const int64_t room = k - above;
  if (ties == room) keep_ge(c, s.keys.data(), K);
  else keep_from(c, s.keys.data(), K, [room](int64_t taken) { return taken < room; });
  return K;
}

// Keys of the candidates into s.keys and their top-p masses lse::term(x, m) into c.q; returns
// the masses' (exact) sum.
inline int64_t masses(SparseRow& c, float m, FilterScratch& s) {
  s.keys.resize(c.n);
  const float* xp = c.x.data();
  int64_t* qp = c.q.data();
  int32_t* kp = s.keys.data();
  const int n = static_cast<int>(c.n);
  int64_t total = 0;
#pragma omp simd reduction(+ : total)
  for (int i = 0; i < n; ++i) {
    qp[i] = lse::term(xp[i], m);
    kp[i] = order_key(xp[i]);
    total += qp[i];
  }
  return total;
}

// Top-p nucleus of candidates c (keys in s, masses in c.q, goal = top_p * float64(Z)) in place:
// every value above the boundary, then the boundary ties in id order while float64(the mass
// before them) < goal. Needs float64(mass(candidates)) >= goal or candidates = every finite
// value. Returns the boundary key.
inline int32_t top_p_of(SparseRow& c, double goal, FilterScratch& s) {
  int64_t above = 0;
  const int32_t K = mass_key(s.keys.data(), c.q.data(), c.n, goal, s.w, s.wq, &above);
  const int32_t* kp = s.keys.data();
  const int n = static_cast<int>(c.n);
  int ties = 0;  // 32-bit lanes (an int64 count makes GCC gather)
#pragma omp simd reduction(+ : ties)
  for (int i = 0; i < n; ++i) ties += kp[i] == K;
  if (ties == 1) {  // the boundary itself: float64(mass(key > K)) < goal always keeps it
    keep_ge(c, s.keys.data(), K);
    return K;
  }
  int64_t qb = 0;
  for (int64_t i = 0; i < c.n; ++i)
    if (s.keys[i] == K) qb = c.q[i];
  keep_from(c, s.keys.data(), K, [above, qb, goal](int64_t taken) { return !reaches(above + taken * qb, goal); });
  return K;
}

struct DrawScratch {
  std::vector<int32_t> w, first, last;
  std::vector<uint32_t> pre;
  std::vector<uint64_t> s, s_hat;
};

// Draw from softmax over a sparse row (ids ascending, max m, at least one entry), mb = the
// block maxima of the dense row, which equal the kept maxima of every block holding a kept
// id (kept sets here are upper sets of the row up to ties at one value). Same words, same
// token as `categorical` on the dense filtered row: a dense block or id of weight 0 is never
// picked, so walking only the kept entries picks the same ones.
inline int64_t sparse_categorical(const SparseRow& r, float m, const std::vector<float>& mb, uint64_t key,
                                  uint32_t stream, uint64_t row, DrawScratch& d) {
  const int64_t n = r.n, nb = static_cast<int64_t>(mb.size());
  d.w.resize(n);
  d.pre.resize(n + 1);
  d.first.resize(nb);
  d.last.assign(nb, -1);
  d.s.resize(nb);
  d.s_hat.resize(nb);
  const int32_t* id = r.id.data();
  const float* x = r.x.data();
  int32_t* w = d.w.data();
  const float* mbp = mb.data();
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) w[i] = cat::in_block_weight(x[i], mbp[id[i] >> 8]);
  // block sums from a wrapping prefix sum (each block's sum is < 2^32) and each block's
  // first / last entry: stores only, no branch per entry
  uint32_t acc = 0;
  d.pre[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    acc += static_cast<uint32_t>(w[i]);
    d.pre[i + 1] = acc;
    d.last[id[i] >> 8] = static_cast<int32_t>(i);
  }
  uint64_t total = 0;
  int32_t prev = -1;  // last entry of the blocks before b
  for (int64_t b = 0; b < nb; ++b) {
    const bool any = d.last[b] >= 0;
    d.first[b] = prev + 1;
    prev = any ? d.last[b] : prev;
    const uint64_t sb = any ? static_cast<uint32_t>(d.pre[d.last[b] + 1] - d.pre[d.first[b]]) : 0;
    d.s[b] = sb;
    d.s_hat[b] = cat::block_weight(sb, m, mbp[b]);
    total += d.s_hat[b];
  }
  for (int trial = 0;; ++trial) {
    const philox::Words pw = philox::block_words(key, stream, (row << 6) + static_cast<uint64_t>(trial));
    const uint64_t thr = cat::floor_mul(total, pw.w[0]);
    uint64_t a = 0;
    int64_t b = 0;
    for (; b < nb - 1; ++b) {
      if (a + d.s_hat[b] > thr) break;
      a += d.s_hat[b];
    }
    const uint64_t thr2 = cat::floor_mul(d.s[b], pw.w[1]);
    uint64_t c = 0;
    int64_t i = d.first[b];
    while (i < d.last[b] && c + static_cast<uint64_t>(w[i]) <= thr2) c += static_cast<uint64_t>(w[i++]);
    if (cat::accept(pw.w[2], x[i], m, w[i], d.s[b], d.s_hat[b]) || trial == cat::kTrials - 1) return id[i];
  }
}

}  // namespace sampling
}  // namespace VQFAST_ISA
}  // namespace vqfast
