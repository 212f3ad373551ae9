// Attention softmax and dropout fused, for bf16 training on CPUs with AVX512-BF16 (txl_core.attention's
// SoftmaxDropoutValues).
//
// Forward, per row of scores: probs = softmax(score) in float32, rounded to bf16 once; dropped = probs / (1 - p)
// where kept, else 0. Backward, per row: g = grad_dropped / (1 - p) where kept, else 0, and
// grad_score = probs * (g - sum(probs * g)). torch's ops for the same take a dozen passes over the (B, H, T, K)
// tensors (a float32 copy, the softmax, a bf16 copy, a random draw, a compare, a multiply, a select, and in the
// backward two selects, two float32 copies, a product, a sum, a multiply-add, a bf16 copy); these take one or
// two, and keep nothing but the bf16 probabilities: the mask is a function of a seed and the element's place.
//
// The mask: element (r, c) of a matrix with K columns takes the 16 bits 16 (c % 4) .. 16 (c % 4) + 15 of the
// 64-bit word w = r * W + c / 4, W = 8 ceil(K / 32), of splitmix64(seed + w * golden), and is kept when they
// are >= round(p * 65536): so with probability 1 - round(p * 65536) / 65536, independently of every other.
// `dropout_rows` applies the same mask to any bf16 or float32 tensor (rows = its last dimension): the forward of
// txl_core.dropout's dropout and, on the gradient, its backward.
#include <immintrin.h>
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "vec_math.h"

namespace {

using bf16 = at::BFloat16;

inline __m512i splitmix64(__m512i x) {
  x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64(x, 30)), _mm512_set1_epi64(0xBF58476D1CE4E5B9LL));
  x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64(x, 27)), _mm512_set1_epi64(0x94D049BB133111EBLL));
  return _mm512_xor_si512(x, _mm512_srli_epi64(x, 31));
}

// keep bits of the 32 elements from column c0 (a multiple of 32) of a row whose first word is `word0`
inline __mmask32 keep32(int64_t seed, int64_t word0, int64_t c0, uint16_t threshold) {
  const __m512i lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  __m512i w = _mm512_add_epi64(_mm512_set1_epi64(word0 + c0 / 4), lanes);
  __m512i x = _mm512_add_epi64(_mm512_set1_epi64(seed),
                               _mm512_mullo_epi64(w, _mm512_set1_epi64(static_cast<int64_t>(0x9E3779B97F4A7C15ULL))));
  return _mm512_cmpge_epu16_mask(splitmix64(x), _mm512_set1_epi16(static_cast<short>(threshold)));
}

inline uint16_t threshold_of(double p) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout probability must be in [0, 1), got ", p);
  return static_cast<uint16_t>(std::min(65535.0, std::nearbyint(p * 65536.0)));
}

inline int64_t words_per_row(int64_t K) { return 8 * ((K + 31) / 32); }

inline __m512 load16(const float* x, __mmask16 m) { return _mm512_maskz_loadu_ps(m, x); }
inline __m512 load16(const bf16* x, __mmask16 m) {
  __m256i h = _mm256_maskz_loadu_epi16(m, x);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline void store16(bf16* y, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(y, m, (__m256i)_mm512_cvtneps_pbh(v));
}
inline __mmask16 tail16(int64_t n) { return n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1); }

inline void store16(float* y, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(y, m, v); }

// out[c] = x[c] * scale where kept, else 0, for columns c0 .. c1 - 1 of one row (c0 a multiple of 32)
template <typename T>
inline void drop_span(const T* x, T* out, int64_t c0, int64_t c1, float scale, int64_t seed, int64_t word0,
                      uint16_t threshold) {
  const __m512 vs = _mm512_set1_ps(scale);
  for (; c0 < c1; c0 += 32) {
    __mmask32 keep = keep32(seed, word0, c0, threshold);
    for (int half = 0; half < 2 && c0 + 16 * half < c1; ++half) {
      int64_t c = c0 + 16 * half;
      __mmask16 m = tail16(c1 - c);
      __mmask16 k = static_cast<__mmask16>(keep >> (16 * half));
      store16(out + c, _mm512_maskz_mul_ps(k, load16(x + c, m), vs), m);
    }
  }
}

template <typename T>
void softmax_dropout_rows(const T* score, bf16* probs, bf16* dropped, int64_t rows, int64_t K, double p,
                          int64_t seed) {
  const uint16_t threshold = threshold_of(p);
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  const int64_t W = words_per_row(K);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(K);
    for (int64_t r = begin; r < end; ++r) {
      const T* s = score + r * K;
      __m512 vmax = _mm512_set1_ps(-INFINITY);
      for (int64_t c = 0; c < K; c += 16) {
        __mmask16 m = tail16(K - c);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, load16(s + c, m));
      }
      const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
      __m512 vsum = _mm512_setzero_ps();
      for (int64_t c = 0; c < K; c += 16) {
        __mmask16 m = tail16(K - c);
        __m512 x = _mm512_sub_ps(load16(s + c, m), mx);
        // below e^-87 (a masked score) the probability is 0, as torch's softmax gives it
        __m512 e = _mm512_maskz_mov_ps(m & _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ), exp512(x));
        vsum = _mm512_add_ps(vsum, e);
        _mm512_mask_storeu_ps(buf.data() + c, m, e);
      }
      const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
      bf16* pr = probs + r * K;
      for (int64_t c = 0; c < K; c += 16) {
        __mmask16 m = tail16(K - c);
        store16(pr + c, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, buf.data() + c), inv), m);
      }
      drop_span(static_cast<const bf16*>(pr), dropped + r * K, 0, K, scale, seed, r * W, threshold);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> softmax_dropout_bf16(const at::Tensor& score, double p, int64_t seed) {
  TORCH_CHECK(score.scalar_type() == at::kBFloat16 || score.scalar_type() == at::kFloat,
              "softmax_dropout_bf16: scores must be bf16 or float32");
  at::Tensor s = score.contiguous();
  const int64_t K = s.size(-1), rows = K ? s.numel() / K : 0;
  at::Tensor probs = at::empty(s.sizes(), s.options().dtype(at::kBFloat16));
  at::Tensor dropped = at::empty_like(probs);
  if (rows == 0) return {probs, dropped};
  if (s.scalar_type() == at::kFloat)
    softmax_dropout_rows(s.data_ptr<float>(), probs.data_ptr<bf16>(), dropped.data_ptr<bf16>(), rows, K, p, seed);
  else
    softmax_dropout_rows(s.data_ptr<bf16>(), probs.data_ptr<bf16>(), dropped.data_ptr<bf16>(), rows, K, p, seed);
  return {probs, dropped};
}

template <typename T>
void dropout_rows_impl(const T* src, T* dst, int64_t rows, int64_t K, double p, int64_t seed) {
  const uint16_t threshold = threshold_of(p);
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  const int64_t W = words_per_row(K);
  if (rows >= 64) {
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        drop_span(src + r * K, dst + r * K, 0, K, scale, seed, r * W, threshold);
    });
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {  // few long rows: split each into spans of 32k columns
    at::parallel_for(0, (K + 32767) / 32768, 1, [&](int64_t begin, int64_t end) {
      drop_span(src + r * K, dst + r * K, begin * 32768, std::min(K, end * 32768), scale, seed, r * W,
                threshold);
    });
  }
}

// x * mask / (1 - p) with the mask of (seed, row, column) over the last dimension: the forward of dropout and,
// given the gradient, its backward; bf16 or float32.
at::Tensor dropout_rows(const at::Tensor& x, double p, int64_t seed) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
              "dropout_rows: bf16 or float32 only");
  at::Tensor c = x.contiguous();
  at::Tensor out = at::empty_like(c);
  const int64_t K = c.dim() ? c.size(-1) : 1, rows = K ? c.numel() / K : 0;
  if (rows == 0) return out;
  if (c.scalar_type() == at::kFloat)
    dropout_rows_impl(c.data_ptr<float>(), out.data_ptr<float>(), rows, K, p, seed);
  else
    dropout_rows_impl(c.data_ptr<bf16>(), out.data_ptr<bf16>(), rows, K, p, seed);
  return out;
}

at::Tensor softmax_dropout_backward_bf16(const at::Tensor& probs, const at::Tensor& grad_dropped, double p,
                                         int64_t seed) {
  TORCH_CHECK(probs.scalar_type() == at::kBFloat16 && grad_dropped.scalar_type() == at::kBFloat16,
              "softmax_dropout_backward_bf16: bf16 tensors only");
  TORCH_CHECK(probs.sizes() == grad_dropped.sizes(), "softmax_dropout_backward_bf16: shapes differ");
  at::Tensor y = probs.contiguous(), gd = grad_dropped.contiguous();
  at::Tensor out = at::empty_like(y);
  const int64_t K = y.size(-1), rows = K ? y.numel() / K : 0;
  const uint16_t threshold = threshold_of(p);
  const __m512 vs = _mm512_set1_ps(static_cast<float>(1.0 / (1.0 - p)));
  const int64_t W = words_per_row(K);
  const bf16* yp = y.data_ptr<bf16>();
  const bf16* gp = gd.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> g(K + 32);
    for (int64_t r = begin; r < end; ++r) {
      const bf16* yr = yp + r * K;
      const bf16* gr = gp + r * K;
      __m512 vdot = _mm512_setzero_ps();
      for (int64_t c0 = 0; c0 < K; c0 += 32) {
        __mmask32 keep = keep32(seed, r * W, c0, threshold);
        for (int half = 0; half < 2 && c0 + 16 * half < K; ++half) {
          int64_t c = c0 + 16 * half;
          __mmask16 m = tail16(K - c);
          __m512 gv = _mm512_maskz_mul_ps(static_cast<__mmask16>(keep >> (16 * half)), load16(gr + c, m), vs);
          _mm512_storeu_ps(g.data() + c, gv);
          vdot = _mm512_fmadd_ps(load16(yr + c, m), gv, vdot);
        }
      }
      const __m512 dot = _mm512_set1_ps(_mm512_reduce_add_ps(vdot));
      bf16* o = op + r * K;
      for (int64_t c = 0; c < K; c += 16) {
        __mmask16 m = tail16(K - c);
        store16(o + c, _mm512_mul_ps(load16(yr + c, m), _mm512_sub_ps(_mm512_loadu_ps(g.data() + c), dot)), m);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(txl_fused, m) {
  m.def("softmax_dropout_bf16(Tensor score, float p, int seed) -> (Tensor, Tensor)");
  m.def("dropout_rows(Tensor x, float p, int seed) -> Tensor");
  m.def("softmax_dropout_backward_bf16(Tensor probs, Tensor grad_dropped, float p, int seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(txl_fused, CPU, m) {
  m.impl("softmax_dropout_bf16", &softmax_dropout_bf16);
  m.impl("dropout_rows", &dropout_rows);
  m.impl("softmax_dropout_backward_bf16", &softmax_dropout_backward_bf16);
}
