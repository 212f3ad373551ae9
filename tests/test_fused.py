"""The compiled bf16 attention kernel (txl_core/fast/csrc/rel_attn.cpp): the relative attention of the pure-torch path
(causal with memory and `rel_shift`, or bidirectional with right padding) to within bf16 rounding and at least as
close to float64 as that path, used only where it applies (bf16 CPU inference), and the model reading segment by
segment with it as without it (skipped where the CPU lacks AVX512-BF16 or no C++ toolchain can build it); and
which build each kind of CPU gets."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import perturb, random_ids, tiny_config

from txl_core.attention import RelMultiHeadAttn, attention_mask, shift_bidirectional, shift_padded
from txl_core.classifier import TXLDocumentClassifier
from txl_core.fast import fused, packed_linear


@pytest.fixture(scope="module")
def op():
    if not fused.cpu_supported():
        pytest.skip("this CPU has no AVX512-BF16")
    try:
        fused.build()
    except Exception as e:  # no compiler or headers: the product falls back, nothing to test here
        pytest.skip(f"the kernel could not be built: {str(e).strip().splitlines()[-1:]}")
    kernel = fused.rel_attn_bf16()
    assert kernel is not None
    return kernel


def _inputs(batch, heads, d_head, qlen, mlen, seed=0, bidirectional=False):
    g = torch.Generator().manual_seed(seed)
    klen = qlen + mlen
    rows = klen + qlen - 1 if bidirectional else klen
    q = torch.randn(batch, qlen, heads, d_head, generator=g).bfloat16().transpose(1, 2)  # as `_project` gives it
    k, v = (torch.randn(batch, heads, klen, d_head, generator=g).bfloat16() for _ in range(2))
    r = torch.randn(rows, heads, d_head, generator=g).bfloat16().transpose(0, 1)  # (H, K or K+T-1, D), strided
    u, vb = (torch.randn(heads, d_head, generator=g).bfloat16() for _ in range(2))
    return q, k, v, r, u, vb


def _float64(q, k, v, r, u, vb, mlen, key_len=None):
    """Causal (key_len None) or bidirectional with keys key_len[b] .. K-1 hidden, in float64."""
    qd, kd, vd, rd = q.double(), k.double(), v.double(), r.double()
    scale = q.size(-1) ** -0.5
    qv = (qd + vb.double()[:, None]) * scale
    score = torch.matmul((qd + u.double()[:, None]) * scale, kd.transpose(-1, -2))
    if key_len is None:
        bd = shift_padded(torch.matmul(qv, F.pad(rd, (0, 0, 1, 0)).transpose(-1, -2)))
        hide = attention_mask(qlen=q.size(2), mlen=mlen, mem_len=0, same_length=False)
    else:
        bd = shift_bidirectional(torch.matmul(qv, rd.transpose(-1, -2)), k.size(2))
        hide = (torch.arange(k.size(2)) >= key_len[:, None])[:, None, None, :]
    return torch.matmul(torch.softmax((score + bd).masked_fill(hide, -torch.inf), -1), vd)  # (B, H, T, D)


def _torch_bf16(q, k, v, r, u, vb, mlen):
    """The product's pure-torch bf16 path: bd, the mask added in place, the fused SDPA."""
    scale = q.size(-1) ** -0.5
    bd = shift_padded(torch.matmul((q + vb[:, None]) * scale, F.pad(r, (0, 0, 1, 0)).transpose(-1, -2)))
    bd[..., mlen:] += torch.zeros(q.size(2), q.size(2), dtype=q.dtype).masked_fill_(
        attention_mask(qlen=q.size(2), mlen=mlen, mem_len=0, same_length=False)[:, mlen:], torch.finfo(q.dtype).min)
    return F.scaled_dot_product_attention(q + u[:, None], k, v, attn_mask=bd, scale=scale)


@pytest.mark.parametrize("batch,heads,d_head,qlen,mlen", [
    (1, 1, 32, 1, 0), (1, 2, 32, 5, 0), (2, 3, 32, 17, 3), (1, 2, 16, 40, 33), (2, 2, 64, 33, 70),
    (1, 2, 48, 31, 1), (3, 4, 32, 64, 64), (2, 8, 32, 256, 256)])
def test_kernel_matches_float64_at_least_as_well_as_torch(op, batch, heads, d_head, qlen, mlen):
    q, k, v, r, u, vb = _inputs(batch, heads, d_head, qlen, mlen)
    out = op(q, u, vb, d_head ** -0.5, None, None, k, v, r, True, None)
    assert out.shape == (batch, qlen, heads, d_head) and out.dtype == torch.bfloat16
    ref = _float64(q, k, v, r, u, vb, mlen)
    err = (out.double().transpose(1, 2) - ref).abs()
    base = (_torch_bf16(q, k, v, r, u, vb, mlen).double() - ref).abs()
    slack = 1.0 if err.numel() >= 4096 else 1.25  # a handful of outputs: either path may be the luckier
    assert err.max() < 0.03 and err.mean() <= base.mean() * slack, (err.max(), err.mean(), base.mean())


def test_kernel_is_causal_and_reads_every_visible_key(op):
    """Changing key j changes exactly the queries that see it (i with j <= M + i)."""
    q, k, v, r, u, vb = _inputs(1, 2, 32, 24, 9, seed=1)
    base = op(q, u, vb, 32 ** -0.5, None, None, k, v, r, True, None)
    for j in (0, 8, 9, 20, 32):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, j] += 3.0
        v2[:, :, j] += 3.0
        moved = (op(q, u, vb, 32 ** -0.5, None, None, k2, v2, r, True, None) - base).abs().amax(dim=(0, 2, 3)) > 0
        assert moved.tolist() == [j <= 9 + i for i in range(24)], j


@pytest.mark.parametrize("split", [0, 1, 9, 17, 33])
def test_kernel_reads_keys_in_two_parts_as_joined(op, split):
    """The kept memory rows' keys and values and this segment's, passed apart: exactly the joined result."""
    q, k, v, r, u, vb = _inputs(2, 3, 32, 24, 9)
    for causal, r_in in ((True, r), (False, torch.randn(3, 33 + 23, 32).bfloat16())):
        joined = op(q, u, vb, 0.2, None, None, k, v, r_in, causal, None)
        apart = op(q, u, vb, 0.2, k[:, :, :split], v[:, :, :split], k[:, :, split:], v[:, :, split:], r_in, causal,
                   None)
        assert torch.equal(apart, joined)


@pytest.mark.parametrize("batch,heads,d_head,qlen,mlen", [(1, 1, 32, 1, 0), (2, 3, 32, 17, 3), (3, 2, 64, 40, 70),
                                                         (2, 8, 32, 256, 256)])
def test_bidirectional_kernel_matches_float64(op, batch, heads, d_head, qlen, mlen):
    """Every query sees every key but the right padding of its document (key_len), positions K-1 ... 1-T."""
    q, k, v, r, u, vb = _inputs(batch, heads, d_head, qlen, mlen, bidirectional=True)
    key_len = torch.tensor([mlen + qlen - 3 * b for b in range(batch)]).clamp(min=1)
    scale = d_head ** -0.5
    for lengths in (None, key_len):
        out = op(q, u, vb, scale, None, None, k, v, r, False, lengths).double().transpose(1, 2)
        ref = _float64(q, k, v, r, u, vb, mlen, torch.full((batch,), mlen + qlen) if lengths is None else lengths)
        err = (out - ref).abs()
        assert err.max() < 0.03 and err.mean() < 2e-3, (err.max(), err.mean())
    if batch > 1:  # the padding really is hidden: changing a padded key changes nothing
        k2 = k.clone()
        k2[1, :, int(key_len[1]):] += 5.0
        assert torch.equal(op(q, u, vb, scale, None, None, k2, v, r, False, key_len),
                           op(q, u, vb, scale, None, None, k, v, r, False, key_len))


def _attention(config) -> RelMultiHeadAttn:
    """A bf16 attention sub-layer with every parameter drawn (its u and v start uninitialized)."""
    attn = RelMultiHeadAttn(config).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 0.2)
    return attn.bfloat16()


def test_attention_layer_uses_the_kernel_only_where_it_applies(op, monkeypatch):
    config = tiny_config(d_model=64, n_head=2, d_head=32, d_inner=64)
    torch.manual_seed(0)
    attn = _attention(config)
    calls = []
    monkeypatch.setattr(fused, "rel_attn_bf16", lambda: (lambda *a: calls.append(1) or op(*a)))
    x, mem = torch.randn(2, 11, 64).bfloat16(), torch.randn(2, 7, 64).bfloat16()
    pos = torch.randn(18, 64).bfloat16()
    mask = attention_mask(qlen=11, mlen=7, mem_len=7, same_length=False)
    with torch.no_grad():
        fast = attn(x, pos_emb=pos, mem=mem, mask=mask)[0]
        assert calls == [1]
        probs = attn(x, pos_emb=pos, mem=mem, mask=mask, need_probs=True)  # the probabilities: torch's path
        assert calls == [1] and probs[1] is not None
        ref = copy.deepcopy(attn).float()(x.float(), pos_emb=pos.float(), mem=mem.float(), mask=mask)[0]  # torch's
        assert calls == [1]
        assert (fast.float() - ref).abs().max() <= 1.5 * (probs[0].float() - ref).abs().max()
    attn(x, pos_emb=pos, mem=mem, mask=mask)  # autograd on: torch's path
    attn.same_length = True
    with torch.no_grad():
        attn(x, pos_emb=pos, mem=mem, mask=attention_mask(qlen=11, mlen=7, mem_len=7, same_length=True))
    assert calls == [1]


@pytest.mark.parametrize("bidirectional,mem_len", [(False, 16), (True, 16), (False, 24), (True, 7)])
def test_model_reads_documents_alike_with_and_without_the_kernel(op, monkeypatch, bidirectional, mem_len):
    """Four segments with memory (and the kept keys and values, which the kernel reads beside this segment's:
    a memory as long as a segment, longer, shorter), bf16, documents of different lengths: the kernel and
    torch's path agree within bf16 rounding and stay as close to float32."""
    config = tiny_config(d_model=64, n_head=2, d_head=32, d_inner=96, mem_len=mem_len, segment_len=16,
                         pooling="mean", num_labels=3, bidirectional=bidirectional)
    torch.manual_seed(0)
    model = perturb(TXLDocumentClassifier(config), scale=0.2).eval()
    ids = random_ids(3, 60)
    lengths = torch.tensor([60, 53, 38])  # the last segments end in padding
    ids = ids.masked_fill(torch.arange(60) >= lengths[:, None], 0)
    with torch.inference_mode():
        ref = model(ids, lengths=lengths).pooled
        fast = copy.deepcopy(model)
        fast.transformer.to(torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with_kernel = fast(ids, lengths=lengths).pooled
            monkeypatch.setattr(fused, "rel_attn_bf16", lambda: None)
            without = fast(ids, lengths=lengths).pooled
    assert not torch.equal(with_kernel, without)  # the kernel ran
    assert (with_kernel - without).abs().max() < 0.05
    assert (with_kernel - ref).abs().max() <= 1.5 * (without - ref).abs().max() + 1e-3


def test_bidirectional_layer_keeps_torch_for_masks_that_are_not_right_padding(op, monkeypatch):
    config = tiny_config(d_model=64, n_head=2, d_head=32, d_inner=64, bidirectional=True, same_length=False)
    torch.manual_seed(0)
    attn = _attention(config)
    calls = []
    monkeypatch.setattr(fused, "rel_attn_bf16", lambda: (lambda *a: calls.append(a[-1]) or op(*a)))
    x, mem, pos = torch.randn(2, 11, 64).bfloat16(), torch.randn(2, 7, 64).bfloat16(), torch.randn(28, 64).bfloat16()
    right = torch.zeros(2, 1, 1, 18, dtype=torch.bool)
    right[1, ..., 15:] = True  # the second document's last 3 tokens are padding
    holes = right.clone()
    holes[0, ..., 4] = True  # a hidden key that is not right padding
    with torch.no_grad():
        fast = attn(x, pos_emb=pos, mem=mem, mask=right)[0]
        assert len(calls) == 1 and calls[0].tolist() == [18, 15]
        slow = attn(x, pos_emb=pos, mem=mem, mask=holes)[0]
        assert len(calls) == 1
        ref = attn(x, pos_emb=pos, mem=mem, mask=right, need_probs=True)[0]
    assert (fast.float() - ref.float())[1].abs().max() < 0.1 and not torch.equal(fast[0], slow[0])


packing = pytest.mark.skipif(not packed_linear.packing_supported(), reason="oneDNN runs no bf16 linear on this CPU")


@packing
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_equals_the_bf16_linear(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80, bias=bias).bfloat16()
    packed = packed_linear.PackedLinear.from_linear(linear)
    for x in (torch.randn(5, 48), torch.randn(2, 7, 48), torch.randn(7, 2, 48).transpose(0, 1)):  # last: strided
        x = x.bfloat16()
        with torch.no_grad():  # (torch's own bf16 linear rounds a strided input's product before the bias)
            assert torch.equal(packed(x), linear(x.contiguous()))
    assert torch.equal(packed.dense_weight(), linear.weight.detach())
    twin = copy.deepcopy(packed)
    fused_relu = packed_linear.PackedLinear.from_linear(linear, relu=True)
    with torch.no_grad():
        assert torch.equal(twin(x), packed(x))
        assert torch.equal(fused_relu(x), torch.relu(packed(x)))
    with pytest.raises(RuntimeError, match="inference only"):
        packed.float()


@packing
def test_bf16_encoder_packs_its_linears_and_reads_as_before(monkeypatch):
    from pipelines.model.inference import to_bf16
    torch.manual_seed(0)
    model = perturb(TXLDocumentClassifier(tiny_config(pooling="mean", num_labels=3)), scale=0.3).eval()
    plain = copy.deepcopy(model)
    monkeypatch.setenv("TXL_PACKED", "0")
    to_bf16(plain.transformer)
    monkeypatch.setenv("TXL_PACKED", "1")
    to_bf16(model.transformer)
    kinds = {type(m).__name__ for m in model.transformer.modules()}
    assert "PackedLinear" in kinds and "Linear" not in kinds and "ReLU" not in kinds
    assert sum(m.relu for m in model.transformer.modules() if isinstance(m, packed_linear.PackedLinear)) == 3  # FF in
    assert not any(type(m) is packed_linear.PackedLinear for m in plain.transformer.modules())
    ids = random_ids(2, 40)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(ids).logits, plain(ids).logits)


def test_txl_fused_0_turns_the_kernel_off(op, monkeypatch):
    monkeypatch.setattr(fused, "_LOADED", {})
    monkeypatch.setenv("TXL_FUSED", "0")
    assert fused.rel_attn_bf16() is None
    monkeypatch.setattr(fused, "_LOADED", {})
    monkeypatch.setenv("TXL_FUSED", "1")
    assert fused.rel_attn_bf16() is op


@pytest.mark.parametrize("flags,expected", [
    ({"avx2", "fma", "bmi2", "avx512f", "avx512bw", "avx512_bf16"}, "avx512_bf16"),
    ({"avx2", "fma", "bmi2", "avx512f", "avx512bw"}, "avx2"),  # AVX-512 without bf16: the float32 build
    ({"avx2", "fma", "bmi2"}, "avx2"),
    ({"sse4_2", "avx"}, None),
    (set(), None),  # not x86, or no /proc/cpuinfo
])
def test_each_cpu_gets_the_build_it_can_run(flags, expected, monkeypatch):
    """The variant follows the CPU's flags, and its build folder is its own (no AVX-512 library on a CPU
    without it)."""
    monkeypatch.setattr(fused, "_flags", lambda: flags)
    monkeypatch.setattr(fused, "_LOADED", {})
    assert fused.variant() == expected
    assert fused.cpu_supported() == (expected == "avx512_bf16")
    assert fused.cache_dir().name.startswith(f"txl_fused_{expected or 'none'}_")
    if expected is None:
        assert fused._ops() is None and fused.softmax_dropout_f32() is None
        with pytest.raises(RuntimeError, match="neither"):
            fused.build()


def test_the_kernel_never_runs_where_attention_dropout_is_on():
    """A training pass read without gradients (pass 1 of the two-pass step) must drop what pass 2 drops: the
    kernel, which has no dropout, is chosen only when no attention dropout is in force."""
    from txl_core.attention import attention_mask
    from txl_core.fast.routes import attention_route

    q = torch.randn(1, 2, 8, 32, dtype=torch.bfloat16)
    kv = torch.randn(1, 2, 16, 32, dtype=torch.bfloat16)
    r = torch.randn(2, 16, 32, dtype=torch.bfloat16)
    mask = attention_mask(qlen=8, mlen=8, mem_len=8, same_length=False)
    common = dict(mask=mask, need_probs=False, d_head=32, bidirectional=False, same_length=False, klen=16)
    with torch.no_grad():
        assert attention_route(q, kv, kv, r, dropout=0.1, **common).name != "kernel"
        if fused.rel_attn_bf16() is not None:
            assert attention_route(q, kv, kv, r, dropout=0.0, **common).name == "kernel"
