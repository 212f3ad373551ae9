// Fused relative attention of Transformer-XL for bf16 inference on CPUs with AVX512-BF16.
//
// out[b, i, h] = sum_j softmax_j(qu_i . k_j + qv_i . r_{T-1-i+j}) v_j, where qu = (q + u) * scale and
// qv = (q + v) * scale (float32, rounded to bf16 once), M = K - T, and r holds the position keys of distances
// K-1 ... 0 (causal: r_{T-1-i+j} is distance M + i - j) or K-1 ... 1-T (bidirectional). The keys are
// j <= M + i (causal) or j < key_len[b] (bidirectional: the padding at the right of a document's last
// segment is no key). Scores, softmax and sums are float32; the three products take bf16 operands with
// float32 accumulation (vdpbf16ps). Keys a query does not see are never computed, so no mask is built.
//
// One task per (batch, head): the keys, position keys and values are packed once into the pair-interleaved
// layout of vdpbf16ps, then the queries go through in blocks of QB rows whose scores (QB x K floats) stay
// in L2. Built by txl_core.fused; D must be a multiple of 16, at most 64.
#include <immintrin.h>
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "vec_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using bf16 = at::BFloat16;
constexpr int QB = 32;  // queries per block

// Rows of a matrix held in two parts (the memory's rows kept from the previous segment, then this segment's),
// so that the keys and values need no concatenated copy: row i is a[i] for i < na, else b[i - na].
struct Rows {
  const bf16* a;
  int64_t lda, na;
  const bf16* b;
  int64_t ldb;
  const bf16* row(int64_t i) const { return i < na ? a + i * lda : b + (i - na) * ldb; }
};

// rows 0 .. n-1 (D wide) -> blocks of 16 rows as [block][D/2 pairs][16 rows][2], rows past n zero: the
// right-hand operand of `dot_rows`.
void pack_rows(const Rows& src, int64_t n, int64_t D, uint16_t* dst) {
  const int64_t nb = (n + 15) / 16, pairs = D / 2;
  uint32_t* d32 = reinterpret_cast<uint32_t*>(dst);
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t p = 0; p < pairs; ++p)
      for (int64_t r = 0; r < 16; ++r) {
        int64_t row = b * 16 + r;
        uint32_t val = 0;
        if (row < n) std::memcpy(&val, src.row(row) + 2 * p, 4);
        d32[(b * pairs + p) * 16 + r] = val;
      }
}

// values (n rows, D wide) -> [pair of rows][D/16][16 columns][2]: the right-hand operand of
// `probs_times_values`; a missing last row is zero.
void pack_values(const Rows& src, int64_t n, int64_t D, uint16_t* dst) {
  const int64_t np = (n + 1) / 2;
  for (int64_t m = 0; m < np; ++m) {
    const uint16_t* even = reinterpret_cast<const uint16_t*>(src.row(2 * m));
    const uint16_t* odd = 2 * m + 1 < n ? reinterpret_cast<const uint16_t*>(src.row(2 * m + 1)) : nullptr;
    for (int64_t d = 0; d < D; ++d) {
      dst[(m * D + d) * 2] = even[d];
      dst[(m * D + d) * 2 + 1] = odd ? odd[d] : 0;
    }
  }
}

// C[m][kb*16 + t] = sum_d A[m][d] B[kb*16 + t][d] for RB rows of A and NB blocks of 16 packed rows of B.
template <int RB, int NB>
inline void dot_tile(const bf16* A, int64_t lda, const uint16_t* Bp, int64_t pairs, float* C, int64_t ldc) {
  __m512 acc[RB][NB];
  for (int m = 0; m < RB; ++m)
    for (int n = 0; n < NB; ++n) acc[m][n] = _mm512_setzero_ps();
  const int32_t* a32[RB];
  for (int m = 0; m < RB; ++m) a32[m] = reinterpret_cast<const int32_t*>(A + m * lda);
  for (int64_t p = 0; p < pairs; ++p) {
    __m512i b[NB];
    for (int n = 0; n < NB; ++n) b[n] = _mm512_loadu_si512(Bp + (n * pairs + p) * 32);
    for (int m = 0; m < RB; ++m) {
      __m512i a = _mm512_set1_epi32(a32[m][p]);
      for (int n = 0; n < NB; ++n)
        acc[m][n] = _mm512_dpbf16_ps(acc[m][n], (__m512bh)a, (__m512bh)b[n]);
    }
  }
  for (int m = 0; m < RB; ++m)
    for (int n = 0; n < NB; ++n) _mm512_storeu_ps(C + m * ldc + n * 16, acc[m][n]);
}

template <int RB>
void dot_rows_rb(const bf16* A, int64_t lda, const uint16_t* Bp, int64_t b0, int64_t b1, int64_t pairs,
                 float* C, int64_t ldc) {
  int64_t kb = b0;
  for (; kb + 4 <= b1; kb += 4) dot_tile<RB, 4>(A, lda, Bp + kb * pairs * 32, pairs, C + kb * 16, ldc);
  for (; kb < b1; ++kb) dot_tile<RB, 1>(A, lda, Bp + kb * pairs * 32, pairs, C + kb * 16, ldc);
}

// C[0:rows][b0*16 : b1*16] = A[0:rows] . B^T over packed blocks b0 .. b1-1.
void dot_rows(const bf16* A, int64_t lda, int64_t rows, const uint16_t* Bp, int64_t b0, int64_t b1,
              int64_t pairs, float* C, int64_t ldc) {
  int64_t m = 0;
  for (; m + 4 <= rows; m += 4) dot_rows_rb<4>(A + m * lda, lda, Bp, b0, b1, pairs, C + m * ldc, ldc);
  for (; m < rows; ++m) dot_rows_rb<1>(A + m * lda, lda, Bp, b0, b1, pairs, C + m * ldc, ldc);
}

// out[m][:] = (sum over key pairs of P[m][2t:2t+2] . Vp[t]) * inv[m], for RB rows, DB = D/16 column blocks.
template <int RB, int DB>
inline void pv_tile(const uint16_t* P, int64_t ldp, int64_t npairs, const uint16_t* Vp, const float* inv,
                    bf16* out, int64_t ldo) {
  __m512 acc[RB][DB];
  for (int m = 0; m < RB; ++m)
    for (int c = 0; c < DB; ++c) acc[m][c] = _mm512_setzero_ps();
  const int32_t* p32[RB];
  for (int m = 0; m < RB; ++m) p32[m] = reinterpret_cast<const int32_t*>(P + m * ldp);
  for (int64_t t = 0; t < npairs; ++t) {
    __m512i b[DB];
    for (int c = 0; c < DB; ++c) b[c] = _mm512_loadu_si512(Vp + (t * DB + c) * 32);
    for (int m = 0; m < RB; ++m) {
      __m512i a = _mm512_set1_epi32(p32[m][t]);
      for (int c = 0; c < DB; ++c) acc[m][c] = _mm512_dpbf16_ps(acc[m][c], (__m512bh)a, (__m512bh)b[c]);
    }
  }
  for (int m = 0; m < RB; ++m) {
    __m512 s = _mm512_set1_ps(inv[m]);
    for (int c = 0; c < DB; ++c) {
      __m256bh h = _mm512_cvtneps_pbh(_mm512_mul_ps(acc[m][c], s));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m * ldo + c * 16), (__m256i)h);
    }
  }
}

template <int DB>
void probs_times_values(const uint16_t* P, int64_t ldp, int64_t rows, int64_t npairs, const uint16_t* Vp,
                        const float* inv, bf16* out, int64_t ldo) {
  constexpr int RB = DB <= 2 ? 8 : 4;  // 16 accumulators for D = 32, enough to hide vdpbf16ps' latency
  int64_t m = 0;
  for (; m + RB <= rows; m += RB) pv_tile<RB, DB>(P + m * ldp, ldp, npairs, Vp, inv + m, out + m * ldo, ldo);
  for (; m < rows; ++m) pv_tile<1, DB>(P + m * ldp, ldp, npairs, Vp, inv + m, out + m * ldo, ldo);
}

// One (batch, head): queries T x D, keys and values K x D, position keys R x D; `causal` or `nk` keys seen.
void run_head(const bf16* q, const float* u, const float* vb, float scale, int64_t ldq, const Rows& k,
              const Rows& v, const Rows& r, int64_t R, bf16* out, int64_t ldo, int64_t T, int64_t K,
              int64_t D, bool causal, int64_t nk, std::vector<uint16_t>& kp, std::vector<uint16_t>& rp,
              std::vector<uint16_t>& vp, std::vector<float>& S, std::vector<float>& Pos,
              std::vector<uint16_t>& probs) {
  const int64_t M = K - T, pairs = D / 2, nblk = (K + 15) / 16, width = nblk * 16, ldp = width + 2;
  const int64_t rblk = (R + 15) / 16, rwidth = rblk * 16;
  kp.resize(width * D);
  rp.resize(rwidth * D);
  vp.resize(width * D + 2 * D);
  S.resize(QB * width);
  Pos.resize(QB * rwidth);
  probs.resize(QB * ldp);
  pack_rows(k, K, D, kp.data());
  pack_rows(r, R, D, rp.data());
  pack_values(v, K, D, vp.data());
  float inv[QB];
  bf16 qu[QB * 64], qv[QB * 64];  // this block's (q + u) * scale and (q + v) * scale, D wide
  for (int64_t i0 = 0; i0 < T; i0 += QB) {
    const int64_t rows = std::min<int64_t>(QB, T - i0);
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t d = 0; d < D; ++d) {
        const float x = static_cast<float>(q[(i0 + m) * ldq + d]);
        qu[m * D + d] = bf16((x + u[d]) * scale);
        qv[m * D + d] = bf16((x + vb[d]) * scale);
      }
    const int64_t kmax = causal ? M + i0 + rows : nk;  // keys the block's queries see, at most
    // content scores for keys 0 .. kmax-1; position scores for r indices T-i0-rows (the last query's first)
    // .. T-1-i0+kmax-1 (the first query's last), query i reading T-1-i+j for key j
    dot_rows(qu, D, rows, kp.data(), 0, (kmax + 15) / 16, pairs, S.data(), width);
    const int64_t rlo = (T - i0 - rows) / 16, rhi = std::min(rblk, (T - 1 - i0 + kmax + 15) / 16);
    dot_rows(qv, D, rows, rp.data(), rlo, rhi, pairs, Pos.data(), rwidth);
    const int64_t kpad = (kmax + 1) / 2 * 2;
    for (int64_t m = 0; m < rows; ++m) {
      const int64_t i = i0 + m, n = causal ? M + i + 1 : nk, shift = T - 1 - i;
      float* s = S.data() + m * width;
      const float* ps = Pos.data() + m * rwidth + shift;
      __m512 mx = _mm512_set1_ps(-INFINITY);
      int64_t j = 0;
      for (; j + 16 <= n; j += 16) {
        __m512 x = _mm512_add_ps(_mm512_loadu_ps(s + j), _mm512_loadu_ps(ps + j));
        _mm512_storeu_ps(s + j, x);
        mx = _mm512_max_ps(mx, x);
      }
      if (j < n) {
        __mmask16 tail = static_cast<__mmask16>((1u << (n - j)) - 1);
        __m512 x = _mm512_add_ps(_mm512_maskz_loadu_ps(tail, s + j), _mm512_maskz_loadu_ps(tail, ps + j));
        _mm512_mask_storeu_ps(s + j, tail, x);
        mx = _mm512_mask_max_ps(mx, tail, mx, x);
      }
      const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
      __m512 sum = _mm512_setzero_ps();
      uint16_t* pr = probs.data() + m * ldp;
      for (j = 0; j + 16 <= n; j += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vmax));
        sum = _mm512_add_ps(sum, e);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(pr + j), (__m256i)_mm512_cvtneps_pbh(e));
      }
      if (j < n) {
        __mmask16 tail = static_cast<__mmask16>((1u << (n - j)) - 1);
        __m512 e = _mm512_maskz_mov_ps(tail, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, s + j), vmax)));
        sum = _mm512_add_ps(sum, e);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(pr + j), (__m256i)_mm512_cvtneps_pbh(e));
        j += 16;
      }
      for (int64_t z = n; z < std::max(j, kpad); ++z) pr[z] = 0;  // keys this query does not see
      inv[m] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    bf16* o = out + i0 * ldo;
    switch (D / 16) {
      case 1: probs_times_values<1>(probs.data(), ldp, rows, kpad / 2, vp.data(), inv, o, ldo); break;
      case 2: probs_times_values<2>(probs.data(), ldp, rows, kpad / 2, vp.data(), inv, o, ldo); break;
      case 3: probs_times_values<3>(probs.data(), ldp, rows, kpad / 2, vp.data(), inv, o, ldo); break;
      default: probs_times_values<4>(probs.data(), ldp, rows, kpad / 2, vp.data(), inv, o, ldo); break;
    }
  }
}

// k_mem, v_mem: the memory rows' keys and values kept from the previous segment (B, H, M, D), or none; then
// k, v hold this segment's rows only, and the keys are [k_mem ; k].
at::Tensor rel_attn_bf16(const at::Tensor& q, const at::Tensor& u, const at::Tensor& v_bias, double scale,
                         const c10::optional<at::Tensor>& k_mem, const c10::optional<at::Tensor>& v_mem,
                         const at::Tensor& k, const at::Tensor& v, const at::Tensor& r, bool causal,
                         const c10::optional<at::Tensor>& key_len) {
  TORCH_CHECK(q.dim() == 4, "q: (B, H, T, D)");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 &&
              k.scalar_type() == at::kBFloat16 && v.scalar_type() == at::kBFloat16 &&
              r.scalar_type() == at::kBFloat16, "bf16 inputs");
  TORCH_CHECK(k_mem.has_value() == v_mem.has_value(), "k_mem and v_mem together");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Mk = k_mem.has_value() ? k_mem->size(2) : 0, Kn = k.size(2), K = Mk + Kn;
  if (k_mem.has_value()) {
    TORCH_CHECK(k_mem->scalar_type() == at::kBFloat16 && v_mem->scalar_type() == at::kBFloat16, "bf16 inputs");
    TORCH_CHECK(k_mem->sizes() == at::IntArrayRef({B, H, Mk, D}) && v_mem->sizes() == k_mem->sizes(),
                "k_mem, v_mem: (B, H, M, D)");
    TORCH_CHECK(k_mem->stride(3) == 1 && v_mem->stride(3) == 1, "unit stride along D");
  }
  TORCH_CHECK(u.sizes() == at::IntArrayRef({H, D}) && v_bias.sizes() == u.sizes(), "u, v_bias: (H, D)");
  std::vector<float> uf(H * D), vf(H * D);  // read here: a cast would be two more operators per call
  for (auto [src, dst] : {std::make_pair(&u, &uf), std::make_pair(&v_bias, &vf)}) {
    const auto t = src->contiguous();
    TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, "u, v_bias: float32 or bf16");
    for (int64_t i = 0; i < H * D; ++i)
      (*dst)[i] = t.scalar_type() == at::kFloat ? t.data_ptr<float>()[i] : static_cast<float>(t.data_ptr<bf16>()[i]);
  }
  TORCH_CHECK(D % 16 == 0 && D <= 64, "head size a multiple of 16, at most 64");
  TORCH_CHECK(k.sizes() == at::IntArrayRef({B, H, Kn, D}) && v.sizes() == k.sizes(), "k, v: (B, H, K, D)");
  const int64_t R = causal ? K : K + T - 1;
  TORCH_CHECK(r.sizes() == at::IntArrayRef({H, R, D}), "r: (H, K, D) causal, (H, K+T-1, D) bidirectional");
  std::vector<int64_t> nk(B, K);
  if (key_len.has_value()) {
    TORCH_CHECK(!causal && key_len->dim() == 1 && key_len->size(0) == B, "key_len: (B,), bidirectional only");
    auto kl = key_len->to(at::kLong).contiguous();
    for (int64_t b = 0; b < B; ++b) {
      nk[b] = kl.data_ptr<int64_t>()[b];
      TORCH_CHECK(nk[b] >= 1 && nk[b] <= K, "key_len in 1 .. K");
    }
  }
  TORCH_CHECK(K >= T, "K >= T");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1 && r.stride(2) == 1,
              "unit stride along D");
  auto out = at::empty({B, T, H, D}, q.options());
  const bf16* q_p = q.data_ptr<bf16>();
  const float* u_p = uf.data();
  const float* vb_p = vf.data();
  const bf16* k_p = k.data_ptr<bf16>();
  const bf16* v_p = v.data_ptr<bf16>();
  const bf16* km_p = Mk ? k_mem->data_ptr<bf16>() : nullptr;
  const bf16* vm_p = Mk ? v_mem->data_ptr<bf16>() : nullptr;
  const bf16* r_p = r.data_ptr<bf16>();
  bf16* o_p = out.data_ptr<bf16>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint16_t> kp, rp, vp, probs;
    std::vector<float> S, Pos;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const Rows kr{Mk ? km_p + b * k_mem->stride(0) + h * k_mem->stride(1) : nullptr, Mk ? k_mem->stride(2) : 0,
                    Mk, k_p + b * k.stride(0) + h * k.stride(1), k.stride(2)};
      const Rows vr{Mk ? vm_p + b * v_mem->stride(0) + h * v_mem->stride(1) : nullptr, Mk ? v_mem->stride(2) : 0,
                    Mk, v_p + b * v.stride(0) + h * v.stride(1), v.stride(2)};
      const Rows rr{nullptr, 0, 0, r_p + h * r.stride(0), r.stride(1)};
      run_head(q_p + b * q.stride(0) + h * q.stride(1), u_p + h * D, vb_p + h * D, static_cast<float>(scale),
               q.stride(2), kr, vr, rr, R,
               o_p + (b * T * H + h) * D, H * D, T, K, D, causal, nk[b], kp, rp, vp, S, Pos, probs);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(txl_fused, m) {
  m.def("rel_attn_bf16(Tensor q, Tensor u, Tensor v_bias, float scale, Tensor? k_mem, Tensor? v_mem, Tensor k, "
        "Tensor v, Tensor r, bool causal, Tensor? key_len) -> Tensor");
}

TORCH_LIBRARY_IMPL(txl_fused, CPU, m) {
  m.impl("rel_attn_bf16", &rel_attn_bf16);
}
