"""The CPU dropout (`txl_core.fast.dropout`): torch's dropout statistics from a cheaper mask, replayable by seed."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from txl_core.attention import RelMultiHeadAttn, attention_mask
from txl_core.fast.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_each_element_is_kept_with_probability_one_minus_p_independently(p):
    torch.manual_seed(0)
    m = keep_mask((400, 1000), p).float()  # 400k draws: the standard error of a rate is below 0.001
    assert abs(m.mean().item() - (1 - p)) < 0.005
    # neighbours share a 64-bit draw: they must still be independent (both kept with probability (1-p)^2)
    for shift in (1, 2, 3, 4):
        both = (m[:, shift:] * m[:, :-shift]).mean().item()
        assert abs(both - (1 - p) ** 2) < 0.005
    assert abs(m.mean(0).std().item() - ((1 - p) * p / 400) ** 0.5) < 0.01  # no column is special


@pytest.mark.parametrize("kernels", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_the_expectation_and_its_gradient_is_the_mask(kernels, dtype, monkeypatch):
    """With `keep_mask` and with the compiled kernels' seeded mask (which keeps no mask for the backward)."""
    from txl_core.fast import fused as fused_module
    if kernels and fused_module.dropout_op(dtype) is None:
        pytest.skip(f"no compiled {dtype} dropout here (not built, or not for this CPU)")
    if not kernels:
        monkeypatch.setattr(fused_module, "_ops", lambda: None)
    torch.manual_seed(0)
    x = torch.randn(300, 500).to(dtype).requires_grad_()
    y = dropout(x, 0.2)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.005
    assert torch.allclose(y[kept].float(), x[kept].float() / 0.8, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5)
    assert abs(y.float().sum().item() - x.float().sum().item()) < 0.02 * x.float().abs().sum().item()
    y.sum().backward()
    assert torch.equal(x.grad.float(), kept.float() * x.grad.float().max())
    assert x.grad.float().max().item() == pytest.approx(1 / 0.8, rel=1e-2)


def test_modes_seeds_and_bf16():
    x = torch.randn(64, 64)
    layer = Dropout(0.3)
    assert layer.eval()(x) is x and Dropout(0.0).train()(x) is x
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    torch.manual_seed(5)
    a = layer.train()(x)
    torch.manual_seed(5)
    assert torch.equal(a, layer(x))  # a restored random state replays the mask (the two-pass training step)
    assert not torch.equal(a, layer(x))
    xb = x.bfloat16()
    assert layer(xb).dtype == torch.bfloat16
    with pytest.raises(ValueError):
        Dropout(1.5)


def test_attention_dropout_averages_to_the_attention_without_it():
    """The explicit training path (CPU, attention dropout) scales what it keeps so that its mean over masks is
    the evaluation path's attention, which is the fused kernel's (pre-LN: the output is linear in the
    dropped-out probabilities)."""
    torch.manual_seed(0)
    config = tiny_config(dropout=0.0, dropatt=0.3, pre_lnorm=True)
    attn = RelMultiHeadAttn(config)
    with torch.no_grad():  # a bare layer's u and v are uninitialised memory (the model initialises them)
        for p in attn.parameters():
            p.normal_(0.0, 0.5)
    x, mem, pos = torch.randn(2, 5, config.d_model), torch.randn(2, 3, config.d_model), torch.randn(8, config.d_model)
    mask = attention_mask(qlen=5, mlen=3, mem_len=3, same_length=False)
    with torch.no_grad():
        expected = attn.eval()(x, pos_emb=pos, mem=mem, mask=mask)[0]
        attn.train()
        runs = torch.stack([attn(x, pos_emb=pos, mem=mem, mask=mask)[0] for _ in range(4000)])
    mean = runs.mean(0)
    assert F.mse_loss(runs[0], expected) > 1e-3  # dropout did act
    assert F.mse_loss(mean, expected) < 0.01 * F.mse_loss(runs[0], expected)


def _unfused(score, v, p, key_len=None):
    """The training attention in torch's separate ops: softmax, Dropout, product."""
    if key_len is not None:
        score = score.masked_fill(torch.arange(score.size(-1)) >= key_len[:, None, None, None], -3e38)
    probs = torch.softmax(score.float(), dim=-1).to(v.dtype)
    return torch.matmul(Dropout(p).train()(probs), v)


def _run(fn, score, v, p, grad, seed=3):
    score, v = score.clone().requires_grad_(), v.clone().requires_grad_()
    torch.manual_seed(seed)
    out = fn(score, v, p)
    out.backward(grad)
    return out, score.grad, v.grad


@pytest.mark.parametrize("kernels", [False, True])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_fused_softmax_dropout_values_equals_the_unfused_ops_in_float32(p, kernels, monkeypatch):
    """With `keep_mask` and with the float32 kernels' seeded mask, which `Dropout` then takes too: the same mask
    from the same random state, so the two-pass training step replays the first pass's dropout. The kernels'
    exponential is not torch's (both within about an ulp), hence the tolerance."""
    from txl_core.fast import fused as fused_module
    from txl_core.fast.softmax_dropout import SoftmaxDropoutValues
    if kernels and fused_module.softmax_dropout_f32() is None:
        pytest.skip("the compiled float32 kernels are not built here (or not for this CPU)")
    if not kernels:
        monkeypatch.setattr(fused_module, "_ops", lambda: None)
    gen = torch.Generator().manual_seed(0)
    score, v = torch.randn(2, 3, 7, 11, generator=gen) * 3, torch.randn(2, 3, 11, 5, generator=gen)
    grad = torch.randn(2, 3, 7, 5, generator=gen)
    fused = _run(SoftmaxDropoutValues.apply, score, v, p, grad)
    plain = _run(_unfused, score, v, p, grad)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_fused_softmax_dropout_values_under_bf16_autocast_is_as_close_as_bf16_allows(monkeypatch):
    """bf16 (torch's ops, the compiled kernels off): the softmax gradient comes from the kept bf16
    probabilities instead of float32 ones."""
    from txl_core.fast import fused as fused_module
    from txl_core.fast.softmax_dropout import SoftmaxDropoutValues
    monkeypatch.setattr(fused_module, "_ops", lambda: None)
    gen = torch.Generator().manual_seed(1)
    score = (torch.randn(2, 4, 16, 32, generator=gen) * 3).bfloat16()
    v, grad = torch.randn(2, 4, 32, 8, generator=gen).bfloat16(), torch.randn(2, 4, 16, 8, generator=gen).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _run(SoftmaxDropoutValues.apply, score, v, 0.1, grad)
        plain = _run(_unfused, score, v, 0.1, grad)
    assert [t.dtype for t in fused] == [t.dtype for t in plain] == [torch.bfloat16] * 3
    torch.testing.assert_close(fused[0], plain[0], rtol=0, atol=0)  # the same forward
    for a, b in zip(fused[1:], plain[1:]):
        assert (a.float() - b.float()).abs().max() <= 0.02 * b.float().abs().max()


@pytest.mark.parametrize("kernels", [False, True])
def test_training_attention_keeps_less_than_half_for_the_backward(kernels, monkeypatch):
    """Bytes saved for the backward by one training attention call (CPU, attention dropout): the fused path
    keeps bf16 probabilities and a mask, 3 bytes per score, where the unfused ops kept 7; with the compiled
    kernels, the probabilities alone (the mask is made again from its seed): 2."""
    from txl_core.fast import fused as fused_module
    if kernels and fused_module.softmax_dropout_bf16() is None:
        pytest.skip("the compiled bf16 kernels are not built here or this CPU lacks AVX512-BF16")
    if not kernels:
        monkeypatch.setattr(fused_module, "_ops", lambda: None)
    config = tiny_config(dropout=0.0, dropatt=0.1, n_head=4, d_head=8, d_model=32)
    attn = RelMultiHeadAttn(config).train()
    with torch.no_grad():
        for prm in attn.parameters():
            prm.normal_(0.0, 0.5)
    x, mem, pos = torch.randn(4, 64, 32), torch.randn(4, 64, 32), torch.randn(128, 32)
    mask = attention_mask(qlen=64, mlen=64, mem_len=64, same_length=False)

    scores = 4 * 4 * 64 * 128  # B H T K

    def saved_bytes_per_score(fused: bool) -> float:
        seen: dict[int, int] = {}

        def pack(t):
            if t.numel() == scores:  # the score-sized tensors (the rest: q, k, v, weights, norms)
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        import txl_core.attention as module
        original = module.SoftmaxDropoutValues.apply
        if not fused:
            module.SoftmaxDropoutValues.apply = _unfused
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16), \
                    torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                attn(x, pos_emb=pos, mem=mem, mask=mask)
        finally:
            module.SoftmaxDropoutValues.apply = original
        return sum(seen.values()) / scores

    assert saved_bytes_per_score(True) == (2 if kernels else 3)  # bf16 probabilities (and the mask)
    # float32 softmax output, the dropped bf16 copy and (without the kernels' seeded dropout) the mask
    assert saved_bytes_per_score(False) == (6 if kernels else 7)


def _kernels():
    from txl_core.fast import fused
    kernels = fused.softmax_dropout_bf16()
    if kernels is None:
        pytest.skip("the compiled bf16 kernels are not built here or this CPU lacks AVX512-BF16")
    return kernels


@pytest.mark.parametrize("k", [1, 17, 40, 512])
def test_softmax_dropout_kernel_forward_is_the_softmax_rounded_once_and_its_dropout(k):
    """Probabilities within one bf16 rounding of the exact softmax (masked scores exactly 0), and the dropped
    copy is probs / (1 - p) where kept, 0 elsewhere: with every row length (the kernels work 16 and 32 wide)."""
    forward, dropout, _ = _kernels()
    gen = torch.Generator().manual_seed(k)
    score = (torch.randn(3, 2, 9, k, generator=gen) * 4).bfloat16()
    if k > 1:
        score[..., -2:] = torch.finfo(torch.bfloat16).min  # padding keys
    for scores in (score, score.float()):
        probs, dropped = forward(scores, 0.1, 42)
        exact = torch.softmax(score.float(), -1)
        assert probs.dtype == dropped.dtype == torch.bfloat16
        ulp = exact.abs().clamp_min(1e-30) * 2.0 ** -8
        assert ((probs.float() - exact).abs() <= ulp).all()
        if k > 1:
            assert (probs[..., -2:] == 0).all() and (dropped[..., -2:] == 0).all()
        kept = dropped != 0
        assert torch.equal(dropped[kept], (probs[kept].float() / 0.9).bfloat16())
        assert torch.equal(dropout(probs, 0.1, 42), dropped)  # the backward's copy is the forward's


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_softmax_dropout_kernel_mask_keeps_one_minus_p_independently_and_replays_its_seed(p):
    """Each element kept with probability 1 - p, independently of its neighbours, rows and tensors; a seed
    gives the same mask again, another seed another."""
    _, dropout, _ = _kernels()
    probs = torch.full((64, 3, 40, 257), 0.5).bfloat16()
    keep = dropout(probs, p, 7) != 0
    n = keep.numel()
    assert abs(keep.float().mean().item() - (1 - p)) < 4 * (p * (1 - p) / n) ** 0.5 + 2 ** -16
    for a, b in ((keep[..., 1:], keep[..., :-1]), (keep[:, :, 1:], keep[:, :, :-1]), (keep[1:], keep[:-1])):
        together = (a & b).float().mean().item()  # neighbouring columns, rows, matrices
        assert abs(together - (1 - p) ** 2) < 0.01
    assert torch.equal(dropout(probs, p, 7) != 0, keep)
    other = dropout(probs, p, 8) != 0
    assert abs((keep & other).float().mean().item() - (1 - p) ** 2) < 0.01


def test_softmax_dropout_values_with_the_kernels_has_the_gradient_of_its_own_mask():
    """The autograd function on the kernels (bf16 autocast, CPU): output and both gradients equal torch's ops
    given the same mask (read off the output's dropped copy), as closely as bf16 allows; torch.manual_seed
    replays the mask."""
    from txl_core.fast.softmax_dropout import SoftmaxDropoutValues
    forward, _, _ = _kernels()
    gen = torch.Generator().manual_seed(5)
    score = (torch.randn(2, 4, 16, 48, generator=gen) * 3).bfloat16()
    v, grad = torch.randn(2, 4, 48, 8, generator=gen).bfloat16(), torch.randn(2, 4, 16, 8, generator=gen).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, grad_score, grad_v = _run(SoftmaxDropoutValues.apply, score, v, 0.1, grad)
        again = _run(SoftmaxDropoutValues.apply, score, v, 0.1, grad)
    assert all(torch.equal(a, b) for a, b in zip((out, grad_score, grad_v), again))
    torch.manual_seed(3)  # the seed the function drew in `_run`
    seed = int(torch.empty((), dtype=torch.int64).random_())
    keep = forward(score, 0.1, seed)[1] != 0

    def with_this_mask(s, values, p):
        probs = torch.softmax(s.float(), dim=-1)
        return torch.matmul(torch.where(keep, probs / (1 - p), 0.0), values.float())
    expected = _run(with_this_mask, score.float(), v.float(), 0.1, grad.float())
    for a, b in zip((out, grad_score, grad_v), expected):
        assert (a.float() - b).abs().max() <= 0.02 * b.abs().max()


def _spec_keep(rows: int, k: int, p: float, seed: int) -> torch.Tensor:
    """The kernels' mask as csrc/softmax_dropout*.cpp define it, in int64 torch ops: element (r, c) keeps when
    bits 16 (c % 4) .. + 15 of splitmix64(seed + (r W + c // 4) golden), W = 8 ceil(k / 32), are >= p 65536."""
    def signed(v):
        return v - (1 << 64) if v >= 1 << 63 else v

    def shr(x, n):  # logical shift of int64
        return (x >> n) & ((1 << (64 - n)) - 1)
    c = torch.arange(k)
    x = seed + (torch.arange(rows)[:, None] * (8 * ((k + 31) // 32)) + c // 4) * signed(0x9E3779B97F4A7C15)
    x = (x ^ shr(x, 30)) * signed(0xBF58476D1CE4E5B9)
    x = (x ^ shr(x, 27)) * signed(0x94D049BB133111EB)
    x = x ^ shr(x, 31)
    return ((x >> (16 * (c % 4))) & 0xFFFF) >= min(65535, round(p * 65536))


def _f32_kernels():
    from txl_core.fast import fused
    kernels = fused.softmax_dropout_f32()
    if kernels is None:
        pytest.skip("the compiled float32 kernels are not built here (or not for this CPU)")
    return kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 7, 8, 33, 257])
def test_kernel_masks_are_the_documented_function_of_seed_and_place(k, dtype):
    """Each build's dropout (the AVX2 float32 one and the AVX512 bf16 one) keeps exactly the elements the
    documented splitmix64 rule keeps, so a seed drops the same elements on either kind of CPU; rows of any
    length, and few long rows (split across threads) alike."""
    from txl_core.fast import fused
    op = fused.dropout_op(dtype)
    if op is None:
        pytest.skip(f"no compiled {dtype} dropout here (not built, or not for this CPU)")
    gen = torch.Generator().manual_seed(k)
    for shape, p, seed in (((4, 3, k), 0.1, 12345), ((2, 5, k), 0.5, -(2 ** 62) + 7), ((2, 40000 + k), 0.2, 9)):
        x = torch.randn(shape, generator=gen).to(dtype)
        keep = _spec_keep(x.numel() // shape[-1], shape[-1], p, seed).view(shape)
        assert torch.equal(op(x, p, seed), torch.where(keep, x * (1.0 / (1.0 - p)), 0.0).to(dtype))


@pytest.mark.parametrize("k", [1, 5, 8, 40, 512])
def test_float32_softmax_dropout_kernel_forward_and_backward(k):
    """Forward: the softmax within 1e-6 of torch's (masked scores exactly 0, every row length: the kernel works
    8 and 32 wide), the dropped copy exactly probs / (1 - p) where the documented mask keeps; backward: the
    softmax gradient of the dropped probabilities, y (g - sum(y g)) with g the dropped gradient."""
    forward, dropout, backward = _f32_kernels()
    gen = torch.Generator().manual_seed(k)
    score = torch.randn(3, 2, 9, k, generator=gen) * 4
    if k > 1:
        score[..., -2:] = torch.finfo(torch.float32).min  # padding keys
    probs, dropped = forward(score, 0.1, 42)
    assert probs.dtype == dropped.dtype == torch.float32
    torch.testing.assert_close(probs, torch.softmax(score, -1), rtol=0, atol=1e-6)
    if k > 1:
        assert (probs[..., -2:] == 0).all()
    keep = _spec_keep(54, k, 0.1, 42).view(score.shape)
    assert torch.equal(dropped, torch.where(keep, probs * (1.0 / 0.9), 0.0))
    assert torch.equal(dropout(probs, 0.1, 42), dropped)  # the backward's copy is the forward's
    grad = torch.randn(score.shape, generator=gen)
    g = torch.where(keep, grad * (1.0 / 0.9), 0.0)
    expected = probs * (g - (probs * g).sum(-1, keepdim=True))
    torch.testing.assert_close(backward(probs, grad, 0.1, 42), expected, rtol=0, atol=1e-6)


def test_float32_training_keeps_only_the_probabilities_for_the_backward(monkeypatch):
    """With the float32 kernels one training attention call keeps 4 bytes per score (the probabilities; the
    mask is made again from its seed) where torch's ops keep 5 (the probabilities and a byte of mask)."""
    from txl_core.fast import fused
    from txl_core.fast.softmax_dropout import SoftmaxDropoutValues
    _f32_kernels()
    score, v = torch.randn(2, 3, 16, 40, requires_grad=True), torch.randn(2, 3, 40, 8, requires_grad=True)

    def saved_bytes_per_score() -> float:
        seen: dict[int, int] = {}

        def pack(t):
            if t.numel() == score.numel():
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            SoftmaxDropoutValues.apply(score, v, 0.1)
        return sum(seen.values()) / score.numel()

    assert saved_bytes_per_score() == 4
    monkeypatch.setattr(fused, "_ops", lambda: None)
    assert saved_bytes_per_score() == 5


def test_float32_kernel_takes_right_padding_as_key_counts():
    """`key_len` gives the padded keys probability 0, exactly as scores masked with float32's minimum do."""
    forward, _, _ = _f32_kernels()
    gen = torch.Generator().manual_seed(2)
    score = torch.randn(3, 2, 5, 37, generator=gen) * 3
    key_len = torch.tensor([37, 9, 1])
    masked = score.masked_fill(torch.arange(37) >= key_len[:, None, None, None], torch.finfo(torch.float32).min)
    got, expected = forward(score, 0.2, 11, key_len), forward(masked, 0.2, 11)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert (got[0][2, ..., 1:] == 0).all() and torch.equal(got[0][2, ..., 0], torch.ones(2, 5))
    with pytest.raises(RuntimeError, match="at least 1"):
        forward(score, 0.2, 11, torch.tensor([37, 0, 3]))


def test_bidirectional_training_attention_with_padding_is_the_same_through_the_key_counts(monkeypatch):
    """A padded last segment in float32 training (bidirectional, attention dropout): the layer's output and
    gradients with the padding passed to the kernel as key counts equal those with the padding masked into the
    scores, under the same random state (so the same dropout masks)."""
    from txl_core.attention import RelMultiHeadAttn
    _f32_kernels()
    config = tiny_config(bidirectional=True, dropout=0.1, dropatt=0.2, n_head=2, d_head=8, d_model=16)
    attn = RelMultiHeadAttn(config).train()
    with torch.no_grad():
        for prm in attn.parameters():
            prm.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(prm.numel()))
    gen = torch.Generator().manual_seed(3)
    x, mem = torch.randn(3, 6, 16, generator=gen), torch.randn(3, 4, 16, generator=gen)
    pos = torch.randn(15, 16, generator=gen)
    key_len = torch.tensor([10, 7, 5])
    mask = (torch.arange(10) >= key_len[:, None])[:, None, None, :]  # (B, 1, 1, K)

    def run():
        inp = x.clone().requires_grad_()
        torch.manual_seed(0)
        out = attn(inp, pos_emb=pos, mem=mem, mask=mask)[0]
        out.square().sum().backward()
        grads = [inp.grad] + [p.grad.clone() for p in attn.parameters()]
        attn.zero_grad()
        return [out] + grads

    from txl_core import attention as attention_module
    from txl_core.fast import routes
    used = []
    original = routes.attention_route

    def spy(*args, **kwargs):
        route = original(*args, **kwargs)
        used.append(route.key_len is not None)
        return route
    monkeypatch.setattr(attention_module, "attention_route", spy)
    with_counts = run()
    monkeypatch.setattr(routes, "f32_training_kernel", lambda v: False)
    with_mask = run()
    assert used == [True, False]
    for a, b in zip(with_counts, with_mask):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert with_counts[0][2, :, :].abs().sum() > 0
