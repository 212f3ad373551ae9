// Attention softmax and dropout fused, for float32 training on CPUs with AVX2 and FMA (x86-64-v3: every x86
// server CPU since 2013, including the AMD EPYCs without AVX-512): txl_core.attention's SoftmaxDropoutValues
// and txl_core.dropout's dropout when a model trains in float32.
//
// Forward, per row of scores: probs = softmax(score); dropped = probs / (1 - p) where kept, else 0. Backward,
// per row: g = grad_dropped / (1 - p) where kept, else 0, and grad_score = probs * (g - sum(probs * g)).
// torch's ops take about ten passes over the (B, H, T, K) tensors for the same (the softmax, a random draw, a
// compare, a multiply, a select, and in the backward a select, a product, a sum, a multiply-add) and keep a
// byte of mask per score; these take one or two and keep nothing but the probabilities.
//
// The mask is csrc/softmax_dropout.cpp's, bit for bit: element (r, c) of a matrix with K columns takes the 16
// bits 16 (c % 4) .. 16 (c % 4) + 15 of the 64-bit word w = r * W + c / 4, W = 8 ceil(K / 32), of
// splitmix64(seed + w * golden), and is kept when they are >= round(p * 65536). So a seed drops the same
// elements on either kind of CPU.
#include <immintrin.h>
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

// the low 64 bits of a * b in each of the four lanes (AVX2 has no 64-bit multiply)
inline __m256i mullo64(__m256i a, __m256i b) {
  __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), b),
                                   _mm256_mul_epu32(a, _mm256_srli_epi64(b, 32)));
  return _mm256_add_epi64(_mm256_mul_epu32(a, b), _mm256_slli_epi64(cross, 32));
}

inline __m256i splitmix64(__m256i x) {
  x = mullo64(_mm256_xor_si256(x, _mm256_srli_epi64(x, 30)), _mm256_set1_epi64x(0xBF58476D1CE4E5B9LL));
  x = mullo64(_mm256_xor_si256(x, _mm256_srli_epi64(x, 27)), _mm256_set1_epi64x(0x94D049BB133111EBLL));
  return _mm256_xor_si256(x, _mm256_srli_epi64(x, 31));
}

// The keep masks of the 32 columns from c0 (a multiple of 32) of a row whose first word is `word0`: four
// vectors of 8 int32 lanes, all ones where kept, for columns c0 .. c0 + 7, + 8 .. + 15, and so on.
struct Keep32 {
  __m256i lanes[4];
};

inline Keep32 keep32(int64_t seed, int64_t word0, int64_t c0, uint16_t threshold) {
  const __m256i golden = _mm256_set1_epi64x(static_cast<int64_t>(0x9E3779B97F4A7C15ULL));
  const __m256i t = _mm256_set1_epi16(static_cast<short>(threshold));
  Keep32 out;
  for (int half = 0; half < 2; ++half) {  // words 0-3 (columns 0-15), words 4-7 (columns 16-31)
    __m256i w = _mm256_add_epi64(_mm256_set1_epi64x(word0 + c0 / 4 + 4 * half), _mm256_setr_epi64x(0, 1, 2, 3));
    __m256i bits = splitmix64(_mm256_add_epi64(_mm256_set1_epi64x(seed), mullo64(w, golden)));
    __m256i kept16 = _mm256_cmpeq_epi16(_mm256_max_epu16(bits, t), bits);  // bits >= t, unsigned
    out.lanes[2 * half] = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(kept16));
    out.lanes[2 * half + 1] = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(kept16, 1));
  }
  return out;
}

inline uint16_t threshold_of(double p) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout probability must be in [0, 1), got ", p);
  return static_cast<uint16_t>(std::min(65535.0, std::nearbyint(p * 65536.0)));
}

inline int64_t words_per_row(int64_t K) { return 8 * ((K + 31) / 32); }

// lanes i < n all ones (n >= 8: all)
inline __m256i tail8(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(n, 8))),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline __m256 load8(const float* x, int64_t n) {
  return n >= 8 ? _mm256_loadu_ps(x) : _mm256_maskload_ps(x, tail8(n));
}
inline void store8(float* y, __m256 v, int64_t n) {
  if (n >= 8) _mm256_storeu_ps(y, v); else _mm256_maskstore_ps(y, tail8(n), v);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}
inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_shuffle_ps(s, s, 1)));
}

// Cephes expf (as csrc/vec_math.h's exp512): range reduction by ln 2, degree-6 polynomial, ~1 ulp; x in
// [-87, 88]
inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 f = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  f = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), f);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(f, f), _mm256_add_ps(f, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));  // p * 2^n; n >= -126, so 2^n is a normal float
}

// One call's dropout: the mask's seed and threshold, the scale of what is kept, the mask's words per row.
struct Dropping {
  int64_t seed;
  uint16_t threshold;
  __m256 scale;
  int64_t words;

  Dropping(double p, int64_t seed_, int64_t K)
      : seed(seed_), threshold(threshold_of(p)), scale(_mm256_set1_ps(static_cast<float>(1.0 / (1.0 - p)))),
        words(words_per_row(K)) {}

  // out[c] = x[c] * scale where kept, else 0, for columns c0 .. c1 - 1 of row r (c0 a multiple of 32)
  void span(const float* x, float* out, int64_t r, int64_t c0, int64_t c1) const {
    for (; c0 < c1; c0 += 32) {
      Keep32 keep = keep32(seed, r * words, c0, threshold);
      for (int q = 0; q < 4 && c0 + 8 * q < c1; ++q) {
        int64_t c = c0 + 8 * q;
        __m256 v = _mm256_mul_ps(load8(x + c, c1 - c), scale);
        store8(out + c, _mm256_and_ps(v, _mm256_castsi256_ps(keep.lanes[q])), c1 - c);
      }
    }
  }
};

// With `key_len` (B,), int64, for scores (B, ...): the row's keys from key_len[b] on are padding, probability 0
// (as a score masked with float32's minimum gets from torch's softmax), without a masked copy of the scores.
std::tuple<at::Tensor, at::Tensor> softmax_dropout_f32(const at::Tensor& score, double p, int64_t seed,
                                                       const std::optional<at::Tensor>& key_len) {
  TORCH_CHECK(score.scalar_type() == at::kFloat, "softmax_dropout_f32: scores must be float32");
  at::Tensor s = score.contiguous();
  at::Tensor probs = at::empty_like(s), dropped = at::empty_like(s);
  const int64_t K = s.dim() ? s.size(-1) : 1, rows = K ? s.numel() / K : 0;
  if (rows == 0) return {probs, dropped};
  at::Tensor lens;
  int64_t rows_per_b = rows;
  if (key_len.has_value()) {
    lens = key_len->to(at::kLong).contiguous();
    TORCH_CHECK(s.dim() >= 2 && lens.dim() == 1 && lens.size(0) == s.size(0),
                "softmax_dropout_f32: key_len must hold one length per row of the scores' first dimension");
    TORCH_CHECK(lens.min().item<int64_t>() >= 1, "softmax_dropout_f32: every key_len must be at least 1");
    rows_per_b = rows / s.size(0);
  }
  const int64_t* lp = lens.defined() ? lens.data_ptr<int64_t>() : nullptr;
  const Dropping drop(p, seed, K);
  const float* sp = s.data_ptr<float>();
  float* pp = probs.data_ptr<float>();
  float* dp = dropped.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* x = sp + r * K;
      float* pr = pp + r * K;
      const int64_t n = lp ? std::min(K, lp[r / rows_per_b]) : K;  // the row's keys; the rest are padding
      __m256 vmax = _mm256_set1_ps(-INFINITY);
      for (int64_t c = 0; c < n; c += 8) {
        __m256 v = load8(x + c, n - c);
        if (n - c < 8) v = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), v, _mm256_castsi256_ps(tail8(n - c)));
        vmax = _mm256_max_ps(vmax, v);
      }
      const __m256 mx = _mm256_set1_ps(hmax(vmax));
      __m256 vsum = _mm256_setzero_ps();
      for (int64_t c = 0; c < n; c += 8) {
        __m256 d = _mm256_sub_ps(load8(x + c, n - c), mx);
        // below e^-87 (a masked score) the probability is 0, as torch's softmax gives it
        __m256 keep = _mm256_cmp_ps(d, _mm256_set1_ps(-87.0f), _CMP_GE_OQ);
        if (n - c < 8) keep = _mm256_and_ps(keep, _mm256_castsi256_ps(tail8(n - c)));
        __m256 e = _mm256_and_ps(exp256(d), keep);
        vsum = _mm256_add_ps(vsum, e);
        store8(pr + c, e, n - c);
      }
      const __m256 inv = _mm256_set1_ps(1.0f / hsum(vsum));
      for (int64_t c = 0; c < n; c += 8) store8(pr + c, _mm256_mul_ps(load8(pr + c, n - c), inv), n - c);
      std::fill(pr + n, pr + K, 0.0f);
      drop.span(pr, dp + r * K, r, 0, K);
    }
  });
  return {probs, dropped};
}

// x * mask / (1 - p) with the mask of (seed, row, column) over the last dimension: the forward of dropout and,
// given the gradient, its backward
at::Tensor dropout_rows_f32(const at::Tensor& x, double p, int64_t seed) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "dropout_rows_f32: float32 only");
  at::Tensor c = x.contiguous();
  at::Tensor out = at::empty_like(c);
  const int64_t K = c.dim() ? c.size(-1) : 1, rows = K ? c.numel() / K : 0;
  if (rows == 0) return out;
  const Dropping drop(p, seed, K);
  const float* src = c.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  if (rows >= 64) {
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) drop.span(src + r * K, dst + r * K, r, 0, K);
    });
    return out;
  }
  for (int64_t r = 0; r < rows; ++r) {  // few long rows: split each into spans of 32k columns
    at::parallel_for(0, (K + 32767) / 32768, 1, [&](int64_t begin, int64_t end) {
      drop.span(src + r * K, dst + r * K, r, begin * 32768, std::min(K, end * 32768));
    });
  }
  return out;
}

at::Tensor softmax_dropout_backward_f32(const at::Tensor& probs, const at::Tensor& grad_dropped, double p,
                                        int64_t seed) {
  TORCH_CHECK(probs.scalar_type() == at::kFloat && grad_dropped.scalar_type() == at::kFloat,
              "softmax_dropout_backward_f32: float32 tensors only");
  TORCH_CHECK(probs.sizes() == grad_dropped.sizes(), "softmax_dropout_backward_f32: shapes differ");
  at::Tensor y = probs.contiguous(), gd = grad_dropped.contiguous();
  at::Tensor out = at::empty_like(y);
  const int64_t K = y.dim() ? y.size(-1) : 1, rows = K ? y.numel() / K : 0;
  if (rows == 0) return out;
  const Dropping drop(p, seed, K);
  const float* yp = y.data_ptr<float>();
  const float* gp = gd.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> g(K);
    for (int64_t r = begin; r < end; ++r) {
      const float* yr = yp + r * K;
      drop.span(gp + r * K, g.data(), r, 0, K);
      __m256 vdot = _mm256_setzero_ps();
      for (int64_t c = 0; c < K; c += 8)  // masked loads give 0 past the row's end
        vdot = _mm256_fmadd_ps(load8(yr + c, K - c), load8(g.data() + c, K - c), vdot);
      const __m256 dot = _mm256_set1_ps(hsum(vdot));
      float* o = op + r * K;
      for (int64_t c = 0; c < K; c += 8)
        store8(o + c, _mm256_mul_ps(load8(yr + c, K - c), _mm256_sub_ps(load8(g.data() + c, K - c), dot)), K - c);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(txl_fused, m) {
  m.def("softmax_dropout_f32(Tensor score, float p, int seed, Tensor? key_len=None) -> (Tensor, Tensor)");
  m.def("dropout_rows_f32(Tensor x, float p, int seed) -> Tensor");
  m.def("softmax_dropout_backward_f32(Tensor probs, Tensor grad_dropped, float p, int seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(txl_fused, CPU, m) {
  m.impl("softmax_dropout_f32", &softmax_dropout_f32);
  m.impl("dropout_rows_f32", &dropout_rows_f32);
  m.impl("softmax_dropout_backward_f32", &softmax_dropout_backward_f32);
}
