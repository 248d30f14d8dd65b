// Token samplers on the CPU (semantics in vqfast/reference/sampling.py):
// OpenMP-style parallel_for over rows (positions); each row of V logits is read once
// into a thread-local float32 scratch and reduced there by vectorized loops
// (sampling_row.h). No [rows, V] probabilities are written.
// Compiled with -ffp-contract=off (setup.py): guidance, temperature and noise match the other
// backends bit for bit. Built twice, portable and AVX-512, one picked at run time (isa.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

#include "isa.h"
#include "vqfast/log_softmax.h"
#include "vqfast/philox.h"

VQFAST_ISA_TARGET_BEGIN
#include "sampling_filter.h"

namespace vqfast {
namespace VQFAST_ISA {
namespace {

using namespace sampling;

// Reads row r of [rows, V] logits as float32: x = u + s * (c - u) (guidance), then
// x / temperature, then banned ids -> -inf; the same float32 operations as the reference.
struct RowLoader {
  const char* c;
  const char* u;  // nullptr without guidance
  at::ScalarType dtype;
  int64_t V;
  float scale, temperature;
  const int64_t* banned;
  int64_t n_banned;

  const float* load(int64_t r, float* x, float* ux) const {
    const size_t row_bytes = static_cast<size_t>(V) * c10::elementSize(dtype);
    if (dtype == at::kFloat && u == nullptr && temperature == 1.0f && n_banned == 0)
      return reinterpret_cast<const float*>(c + r * row_bytes);
    to_float(c + r * row_bytes, dtype, V, x);
    if (u != nullptr) {
      to_float(u + r * row_bytes, dtype, V, ux);
      const float s = scale;
#pragma omp simd
      for (int64_t v = 0; v < V; ++v) x[v] = ux[v] + s * (x[v] - ux[v]);
    }
    if (temperature != 1.0f) {
      const float t = temperature;
#pragma omp simd
      for (int64_t v = 0; v < V; ++v) x[v] = x[v] / t;
    }
    for (int64_t i = 0; i < n_banned; ++i) x[banned[i]] = -kInf;
    return x;
  }
};

int64_t grain_rows(int64_t V) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(V, 1)); }

RowLoader loader_of(const at::Tensor& logits, const at::Tensor* uncond, double scale, double temperature,
                    const at::Tensor* banned) {
  return RowLoader{static_cast<const char*>(logits.data_ptr()),
                   uncond ? static_cast<const char*>(uncond->data_ptr()) : nullptr,
                   logits.scalar_type(),
                   logits.size(-1),
                   static_cast<float>(scale),
                   static_cast<float>(temperature),
                   banned ? banned->data_ptr<int64_t>() : nullptr,
                   banned ? banned->numel() : 0};
}

// (score desc, index asc): the order in which positions are revealed / selected.
bool ranks_before(const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

void check_logits(const at::Tensor& logits, int64_t dim, const char* op) {
  TORCH_CHECK(logits.dim() == dim && logits.is_contiguous(), op, ": contiguous logits with ", dim, " dims expected");
  const auto t = logits.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op, ": fp32/fp16/bf16 logits expected");
}

// Per-thread state of the filtered draws (sampling_filter.h).
struct FilterState {
  std::vector<float> mb;
  SparseRow c;
  FilterScratch fs;
  DrawScratch ds;
  float t = -std::numeric_limits<float>::max();  // candidates: x >= t (a guess from the previous row)
};

// Token of one row under top_k (> 0) and/or top_p (< 1), -1 on bad rows. The candidates
// x >= t hold the answer when there are >= top_k of them (top-k) or float64 of their integer
// mass reaches top_p * float64(Z) (top-p alone); else the pass is repeated with t lowered, down
// to every finite x.
int64_t filtered_draw(const float* x, int64_t V, int64_t top_k, double top_p, uint64_t key, uint64_t row,
                      FilterState& st) {
  constexpr float kAll = -std::numeric_limits<float>::max();
  const bool use_k = top_k > 0, use_p = top_p < 1.0;
  float t = st.t;
  const Collected a = collect(x, V, t, st.mb, st.c);
  if (a.bad) return -1;
  // top-p alone: Z sums the whole row; after top-k, the kept values only (below)
  double goal = use_p && !use_k ? top_p * static_cast<double>(row_mass(x, V, a.m, st.mb)) : 0.0;
  for (;;) {
    const bool enough = use_k ? st.c.n >= top_k : reaches(masses(st.c, a.m, st.fs), goal);
    if (enough || t == kAll) break;
    // Lower t by 1.5x its gap to the max; where |m| is large, m - 1.5 rounds back to m or t
    // (ulp(m) > 1.5): then take every finite value, as t must fall on every pass.
    const float lower = a.m - 1.5f * std::max(a.m - t, 1.0f);
    t = a.m - t < 64.0f && lower < std::min(t, a.m) ? lower : kAll;
    collect(x, V, t, st.mb, st.c);
  }
  int32_t K = 0;
  if (use_k) {
    K = top_k_of(st.c, top_k, st.fs);
    if (use_p) goal = top_p * static_cast<double>(masses(st.c, a.m, st.fs));
  }
  if (use_p) {
    const int32_t Kp = top_p_of(st.c, goal, st.fs);
    K = use_k ? K : Kp;
  }
  const float lo = key_to_float(K);  // next row's guess: this row's boundary, lowered by a margin
  st.t = lo - ((use_p && !use_k ? 0.07f : 0.15f) * (a.m - lo) + 0.1f);
  return sparse_categorical(st.c, a.m, st.mb, key, kStreamToken, row, st.ds);
}

}  // namespace

// logits [B, L, V], masked [B, L] bool, n_reveal [B] int64 (validated by the caller),
// banned [nb] int64 -> tokens [B, L] int64 (-1 on bad rows), confidence [B, L] fp32, reveal [B, L] bool.
std::tuple<at::Tensor, at::Tensor, at::Tensor> gumbel_topk_select_cpu(
    const at::Tensor& logits, const at::Tensor& masked, const at::Tensor& n_reveal, double temperature,
    bool sample, const at::Tensor& banned, int64_t key) {
  check_logits(logits, 3, "gumbel_topk_select_cpu");
  TORCH_CHECK(logits.size(2) <= lse::kMaxVocab, "gumbel_topk_select_cpu: V <= 2^23 - 1 expected");
  const int64_t B = logits.size(0), L = logits.size(1), V = logits.size(2);
  auto mask = masked.to(at::kBool).contiguous();
  auto nrev = n_reveal.to(at::kLong).contiguous();
  auto ban = banned.to(at::kLong).contiguous();
  auto tokens = at::empty({B, L}, logits.options().dtype(at::kLong));
  auto conf = at::empty({B, L}, logits.options().dtype(at::kFloat));
  auto reveal = at::zeros({B, L}, logits.options().dtype(at::kBool));
  if (B * L == 0) return {tokens, conf, reveal};
  const RowLoader ld = loader_of(logits, nullptr, 1.0, 1.0, &ban);
  const bool* mk = mask.data_ptr<bool>();
  int64_t* tok = tokens.data_ptr<int64_t>();
  float* cf = conf.data_ptr<float>();
  const float tau = static_cast<float>(temperature);
  const uint64_t k = static_cast<uint64_t>(key);
  at::parallel_for(0, B * L, grain_rows(V), [&](int64_t r0, int64_t r1) {
    std::vector<float> scratch(V);
    RowScan sc;
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = ld.load(r, scratch.data(), nullptr);
      scan_row(x, V, sample, mk[r], sc);  // the log-softmax terms only where a confidence is written
      if (sc.bad) {
        tok[r] = -1;
        cf[r] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      const int64_t t = sample ? categorical(x, V, sc, k, kStreamToken, static_cast<uint64_t>(r)) : first_max(x, V, sc);
      tok[r] = t;
      const float g = gumbel_from_word(philox::element_word(k, kStreamConfidence, r));
      cf[r] = mk[r] ? ((x[t] - sc.m) - sc.norm()) + tau * g : -kInf;  // vqfast/log_softmax.h
    }
  });
  const int64_t* nr = nrev.data_ptr<int64_t>();
  bool* rv = reveal.data_ptr<bool>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<std::pair<float, int64_t>> cand;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = nr[b];
      cand.clear();
      bool bad = false;
      for (int64_t l = 0; l < L; ++l) {
        bad |= tok[b * L + l] < 0;
        if (mk[b * L + l]) cand.emplace_back(cf[b * L + l], l);
      }
      if (bad || n <= 0 || n > static_cast<int64_t>(cand.size())) continue;  // caller raises / validated
      std::nth_element(cand.begin(), cand.begin() + (n - 1), cand.end(), ranks_before);
      for (int64_t i = 0; i < n; ++i) rv[b * L + cand[i].second] = true;
    }
  });
  return {tokens, conf, reveal};
}

// logits [B, L, V], known [B, L] bool -> positions [B, n], tokens [B, n] (-1 past a row's
// unknown count), bad [B] bool (an unknown position's logits had NaN/+inf/no finite value).
std::tuple<at::Tensor, at::Tensor, at::Tensor> select_and_sample_topk_cpu(
    const at::Tensor& logits, const at::Tensor& known, int64_t top_k, int64_t n_positions, double temperature,
    int64_t key) {
  check_logits(logits, 3, "select_and_sample_topk_cpu");
  TORCH_CHECK(logits.size(2) <= lse::kMaxVocab, "select_and_sample_topk_cpu: V <= 2^23 - 1 expected");
  TORCH_CHECK(top_k >= 1 && n_positions >= 1 && temperature > 0, "select_and_sample_topk_cpu: bad arguments");
  const int64_t B = logits.size(0), L = logits.size(1), V = logits.size(2);
  const int64_t kk = std::min(top_k, V);
  auto kn = known.to(at::kBool).contiguous();
  auto positions = at::full({B, n_positions}, -1, logits.options().dtype(at::kLong));
  auto tokens = at::full({B, n_positions}, -1, logits.options().dtype(at::kLong));
  auto bad = at::zeros({B}, logits.options().dtype(at::kBool));
  auto score = at::empty({B * L}, logits.options().dtype(at::kFloat));
  if (B * L == 0) return {positions, tokens, bad};
  const RowLoader ld = loader_of(logits, nullptr, 1.0, temperature, nullptr);
  const bool* kp = kn.data_ptr<bool>();
  float* sc = score.data_ptr<float>();
  at::parallel_for(0, B * L, grain_rows(V), [&](int64_t r0, int64_t r1) {
    std::vector<float> scratch(V);
    RowScan rs;
    for (int64_t r = r0; r < r1; ++r) {
      if (kp[r]) continue;  // known positions are never read
      const float* x = ld.load(r, scratch.data(), nullptr);
      scan_row(x, V, false, true, rs);
      sc[r] = rs.bad ? std::numeric_limits<float>::quiet_NaN() : -rs.norm();  // max_v log softmax
    }
  });
  int64_t* pos = positions.data_ptr<int64_t>();
  bool* bd = bad.data_ptr<bool>();
  for (int64_t b = 0; b < B; ++b) {
    std::vector<std::pair<float, int64_t>> cand;
    for (int64_t l = 0; l < L; ++l) {
      if (kp[b * L + l]) continue;
      bd[b] = bd[b] || std::isnan(sc[b * L + l]);
      cand.emplace_back(sc[b * L + l], l);
    }
    if (bd[b]) continue;
    const int64_t n = std::min<int64_t>(n_positions, cand.size());
    if (n == 0) continue;
    std::partial_sort(cand.begin(), cand.begin() + n, cand.end(), ranks_before);
    for (int64_t i = 0; i < n; ++i) pos[b * n_positions + i] = cand[i].second;
  }
  int64_t* tk = tokens.data_ptr<int64_t>();
  const uint64_t k = static_cast<uint64_t>(key);
  at::parallel_for(0, B * n_positions, 1, [&](int64_t s0, int64_t s1) {
    std::vector<float> scratch(V);
    RowScan rs;
    FilterState st;
    for (int64_t s = s0; s < s1; ++s) {
      if (pos[s] < 0) continue;
      const int64_t r = (s / n_positions) * L + pos[s];
      const float* x = ld.load(r, scratch.data(), nullptr);
      if (kk < V) {
        tk[s] = filtered_draw(x, V, kk, 1.0, k, static_cast<uint64_t>(r), st);
      } else {
        scan_row(x, V, true, false, rs);
        tk[s] = categorical(x, V, rs, k, kStreamToken, static_cast<uint64_t>(r));
      }
    }
  });
  return {positions, tokens, bad};
}

// logits [N, V] (uncond [N, V] or undefined) -> tokens [N] int64, -1 on bad rows.
// top_k <= 0: no top-k; top_p >= 1: no top-p; temperature 0: greedy.
at::Tensor sample_logits_cpu(const at::Tensor& logits, const c10::optional<at::Tensor>& uncond, double cfg_scale,
                             double temperature, int64_t top_k, double top_p, int64_t key) {
  check_logits(logits, 2, "sample_logits_cpu");
  const int64_t N = logits.size(0), V = logits.size(1);
  at::Tensor u;
  if (uncond.has_value() && uncond->defined()) {
    u = uncond->to(logits.scalar_type()).contiguous();
    TORCH_CHECK(u.sizes() == logits.sizes(), "sample_logits_cpu: uncond must match logits");
  }
  auto tokens = at::empty({N}, logits.options().dtype(at::kLong));
  if (N == 0) return tokens;
  const bool greedy = temperature == 0.0;
  const RowLoader ld = loader_of(logits, u.defined() ? &u : nullptr, cfg_scale, greedy ? 1.0 : temperature, nullptr);
  const bool use_k = top_k > 0 && top_k < V, use_p = top_p < 1.0;
  int64_t* tk = tokens.data_ptr<int64_t>();
  const uint64_t k = static_cast<uint64_t>(key);
  at::parallel_for(0, N, grain_rows(V), [&](int64_t r0, int64_t r1) {
    std::vector<float> scratch(V), uscratch(u.defined() ? V : 0);
    RowScan rs;
    FilterState st;
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = ld.load(r, scratch.data(), uscratch.data());
      if (!greedy && (use_k || use_p)) {
        tk[r] = filtered_draw(x, V, use_k ? top_k : 0, use_p ? top_p : 1.0, k, static_cast<uint64_t>(r), st);
        continue;
      }
      const bool plain = !greedy;
      scan_row(x, V, plain, false, rs);
      if (rs.bad) {
        tk[r] = -1;
        continue;
      }
      if (greedy) {
        tk[r] = first_max(x, V, rs);
        continue;
      }
      tk[r] = categorical(x, V, rs, k, kStreamToken, static_cast<uint64_t>(r));
    }
  });
  return tokens;
}

}  // namespace VQFAST_ISA
}  // namespace vqfast
VQFAST_ISA_TARGET_END

#if !VQFAST_AVX512
VQFAST_AVX512_DECLARE(gumbel_topk_select_cpu)
VQFAST_AVX512_DECLARE(select_and_sample_topk_cpu)
VQFAST_AVX512_DECLARE(sample_logits_cpu)

TORCH_LIBRARY_FRAGMENT(vqfast_cpu, m) {
  m.def("gumbel_topk_select(Tensor logits, Tensor masked, Tensor n_reveal, float temperature, bool sample, "
        "Tensor banned, int key) -> (Tensor, Tensor, Tensor)");
  m.def("select_and_sample_topk(Tensor logits, Tensor known, int top_k, int n_positions, float temperature, "
        "int key) -> (Tensor, Tensor, Tensor)");
  m.def("sample_logits(Tensor logits, Tensor? uncond, float cfg_scale, float temperature, int top_k, "
        "float top_p, int key) -> Tensor");
}

TORCH_LIBRARY_IMPL(vqfast_cpu, CPU, m) {
  m.impl("gumbel_topk_select", VQFAST_ISA_PICK(gumbel_topk_select_cpu));
  m.impl("select_and_sample_topk", VQFAST_ISA_PICK(select_and_sample_topk_cpu));
  m.impl("sample_logits", VQFAST_ISA_PICK(sample_logits_cpu));
}
#endif
