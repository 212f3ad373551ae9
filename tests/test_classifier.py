"""Properties of the whole-document classifier and its constant-memory training step.

A document's prediction must not depend on the batch it is in or on its padding; the per-segment explanation
must add up to the logits; `backward_document` must give the gradients of plain back-propagation through
every segment while keeping only one segment's activations alive.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import perturb, random_ids, tiny_config

from txl_core.classifier import TXLDocumentClassifier
from txl_core.recompute import backward_document

POOLINGS = ["mean", "max", "attention", "last"]
N_LABELS = 6
SEG = 11  # segment_len of tiny_config; mem_len is 7 < SEG


def classifier(pooling: str, **overrides) -> TXLDocumentClassifier:
    model = perturb(TXLDocumentClassifier(tiny_config(num_labels=N_LABELS, pooling=pooling, **overrides)))
    if pooling == "attention":
        assert model.pool_query.abs().min() > 0  # perturbed: a real softmax over the tokens, not mean pooling
    return model.eval()


def batch(lengths: list[int], *, pad_to: int | None = None, seed: int = 0, pad_id: int | None = 0):
    """Right-padded random documents (B, N); pad_id None pads with random ids."""
    n = pad_to or max(lengths)
    ids = random_ids(len(lengths), n, seed=seed)
    if pad_id is not None:
        for b, length in enumerate(lengths):
            ids[b, length:] = pad_id
    return ids, torch.tensor(lengths)


def probs(model, ids, lengths, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, lengths, **kw).logits.softmax(-1)


ATTENTION = {"causal": {}, "causal-same-length": {"same_length": True}, "bidirectional": {"bidirectional": True}}


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_a_document_alone_equals_the_document_in_a_batch(pooling, attention):
    model = classifier(pooling, **ATTENTION[attention])
    lengths = [5, 30, 47, 23]  # leave the batch at different segments
    ids, lens = batch(lengths, seed=1)
    together = probs(model, ids, lens)
    for b, length in enumerate(lengths):
        alone = probs(model, ids[b:b + 1, :length], torch.tensor([length]))
        torch.testing.assert_close(together[b:b + 1], alone, rtol=0, atol=1e-5)
    assert (together[0] - together[1]).abs().max() > 1e-4  # the documents do differ


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_changes_nothing(pooling, bidirectional):
    model = classifier(pooling, bidirectional=bidirectional)
    ids, lens = batch([5, 30, 17], seed=2)
    junk = random_ids(3, 60, seed=99)  # other ids beyond each length, and three more segments of them
    for b, length in enumerate(lens.tolist()):
        junk[b, :length] = ids[b, :length]
    assert not torch.equal(junk[:, :30], ids)
    torch.testing.assert_close(probs(model, junk, lens), probs(model, ids, lens), rtol=0, atol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_segment_logits_add_up_to_the_logits(pooling):
    model = classifier(pooling)
    lengths = [5, 30, 33, 12]
    ids, lens = batch(lengths, seed=3)
    with torch.no_grad():
        out = model(ids, lens, explain=True)
    assert len(out.segment_logits) == len(lengths)
    for b, length in enumerate(lengths):
        parts = out.segment_logits[b]
        assert parts.shape == (math.ceil(length / SEG), N_LABELS)
        torch.testing.assert_close(parts.sum(0), out.logits[b] - model.head.bias, rtol=0, atol=1e-5)
    if pooling == "last":
        assert torch.all(out.segment_logits[1][:-1] == 0)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


LOSSES = {
    "single-label-ce": lambda logits: F.cross_entropy(logits, torch.tensor([0, 5, 2])),
    "multi-label-bce": lambda logits: F.binary_cross_entropy_with_logits(
        logits, (torch.arange(3 * N_LABELS).view(3, N_LABELS) % 4 == 1).float()),
}


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_backward_document_equals_full_backprop(pooling, loss_name, bidirectional):
    loss_fn = LOSSES[loss_name]
    model = classifier(pooling, dropout=0.2, dropatt=0.2, classifier_dropout=0.2,
                       multi_label=loss_name.startswith("multi"), bidirectional=bidirectional).train()
    ids, lens = batch([40, 13, 26], seed=4)

    torch.manual_seed(7)
    model.zero_grad()
    logits = model(ids, lens).logits
    loss = loss_fn(logits)
    loss.backward()
    expected = _grads(model)

    torch.manual_seed(7)
    model.zero_grad()
    loss2, logits2 = backward_document(model, ids, lens, loss_fn)
    got = _grads(model)

    torch.testing.assert_close(logits2, logits.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(loss2, loss.detach(), rtol=0, atol=1e-6)
    assert got.keys() == expected.keys() and len(got) > 20
    for name in expected:  # float32 sums in another order: within a few ulps of the tensor's largest entry
        atol = 1e-6 * max(1.0, expected[name].abs().max().item())
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=atol, msg=name)
    torch.manual_seed(8)
    assert (model(ids, lens).logits - logits).abs().max() > 1e-3  # dropout is active: the seeds mattered


def test_a_document_longer_than_ten_segments():
    model = classifier("attention")
    length = SEG * 10 + 4
    ids, lens = batch([length, 9], seed=5)
    with torch.no_grad():
        out = model(ids, lens, explain=True)
    assert torch.isfinite(out.logits).all()
    assert out.segment_logits[0].shape == (11, N_LABELS)
    alone = probs(model, ids[:1], lens[:1])
    torch.testing.assert_close(out.logits[:1].softmax(-1), alone, rtol=0, atol=1e-5)
    model.zero_grad()
    _, logits = backward_document(model, ids, lens, lambda z: z.logsumexp(-1).sum())
    torch.testing.assert_close(logits, out.logits, rtol=0, atol=1e-5)
    assert model.transformer.layers[0].dec_attn.qkv_net.weight.grad.abs().sum() > 0


def test_short_batches_take_the_direct_route_with_the_same_gradients():
    """Up to `direct_segments` segments the step back-propagates at once; the two routes agree."""
    model = classifier("attention", dropout=0.2).train()
    ids, lens = batch([2 * SEG, 13, 5], seed=9)
    loss_fn = LOSSES[next(iter(LOSSES))]
    grads = []
    for direct in (2, 0):
        torch.manual_seed(3)
        model.zero_grad()
        backward_document(model, ids, lens, loss_fn, direct_segments=direct)
        grads.append(_grads(model))
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5, msg=name)


class SavedTensorMeter:
    """Bytes of activations autograd holds for backward, live and at their peak (via saved-tensor hooks)."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, tensor):
        return _Held(tensor, self)

    @staticmethod
    def unpack(held):
        return held.tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


class _Held:
    def __init__(self, tensor, meter):
        self.tensor, self.meter, self.size = tensor, meter, tensor.numel() * tensor.element_size()
        meter.live += self.size
        meter.peak = max(meter.peak, meter.live)

    def __del__(self):
        self.meter.live -= self.size


def _peak_saved(model, ids, lens, *, recompute: bool) -> int:
    meter, loss_fn = SavedTensorMeter(), lambda z: F.cross_entropy(z, torch.zeros(len(z), dtype=torch.long))
    model.zero_grad()
    with meter.hooks():
        if recompute:
            backward_document(model, ids, lens, loss_fn)
        else:
            loss_fn(model(ids, lens).logits).backward()
    return meter.peak


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_backward_document_keeps_one_segment_alive(pooling):
    """A 4096-token document needs no more saved activations than a 3-segment one; full backprop grows."""
    model = classifier(pooling, segment_len=64, mem_len=48)  # 64 segments; one train step in about a second
    short, long_ = batch([3 * 64], seed=6), batch([4096], seed=6)
    bounded = _peak_saved(model, *long_, recompute=True)
    assert bounded <= 1.01 * _peak_saved(model, *short, recompute=True)  # slack: cluster index sizes vary
    assert model.transformer.word_emb.emb_layers[0].weight.grad is not None
    assert _peak_saved(model, *batch([6 * 64], seed=6), recompute=False) > 1.5 * _peak_saved(
        model, *short, recompute=False)  # the meter does see activations pile up


def test_classifier_learns_a_two_class_task():
    """Class 1 documents contain a marker token somewhere; the model must find it across segments."""
    torch.manual_seed(0)
    model = TXLDocumentClassifier(tiny_config(num_labels=2, pooling="max")).train()
    gen = torch.Generator().manual_seed(11)
    lengths = torch.randint(15, 40, (8,), generator=gen)
    ids = torch.randint(2, 53, (8, 40), generator=gen)
    labels = torch.arange(8) % 2
    for b in range(8):
        if labels[b]:
            ids[b, torch.randint(0, int(lengths[b]), (1,), generator=gen)] = 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss, _ = backward_document(model, ids, lengths, lambda z: F.cross_entropy(z, labels))
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        predictions = model.eval()(ids, lengths).logits.argmax(-1)
    assert losses[-1] < 0.1 * losses[0], losses
    assert torch.equal(predictions, labels)


@pytest.mark.parametrize("first", [0, 1, 2])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_a_window_back_propagates_exactly_its_segments_shares(pooling, first):
    """`window`: pass 2 restarts from the memory and random state pass 1 had at the window's start and
    back-propagates those segments' shares only; they equal the shares a full re-read gives (dropout on)."""
    from txl_core.pooling import PoolState
    from txl_core.recompute import _rng_state, _set_rng_state, _surrogate

    model = classifier(pooling, dropout=0.2, dropatt=0.2).train()
    ids, lens = batch([40, 13, 26], seed=4)  # 4, 2 and 3 segments of SEG = 11
    loss_fn = LOSSES["single-label-ce"]
    window = 2

    torch.manual_seed(7)
    model.zero_grad()
    before = _rng_state(ids.device)
    with torch.no_grad():
        final, _ = model.read(ids, lens)
    total = final.total.detach().requires_grad_()
    norm = final.norm.detach().requires_grad_(pooling == "attention")
    loss = loss_fn(model.classify(PoolState(total, norm, final.ref)))
    loss.backward()
    _set_rng_state(before, ids.device)
    for index, seg in enumerate(model.iter_segments(ids, lens)):
        part = model.segment_state(seg, ref=final.ref[seg.rows])
        s = _surrogate(pooling, part, final.select(seg.rows), seg.is_last, total.grad[seg.rows],
                       None if norm.grad is None else norm.grad[seg.rows])
        if first <= index < first + window and s.requires_grad:
            s.backward()
    expected = _grads(model)

    torch.manual_seed(7)
    model.zero_grad()
    loss2, _ = backward_document(model, ids, lens, loss_fn, window=window, first=first)
    got = _grads(model)
    torch.testing.assert_close(loss2, loss.detach(), rtol=0, atol=1e-6)
    assert got.keys() == expected.keys()
    for name in expected:
        atol = 1e-6 * max(1.0, expected[name].abs().max().item())
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=atol, msg=name)

    model.zero_grad()  # a window as long as the longest document is the exact gradient
    torch.manual_seed(7)
    backward_document(model, ids, lens, loss_fn, window=4)
    wide = _grads(model)
    model.zero_grad()
    torch.manual_seed(7)
    backward_document(model, ids, lens, loss_fn)
    for name, g in _grads(model).items():
        torch.testing.assert_close(wide[name], g, rtol=0, atol=0)


def test_documents_that_end_before_the_window_add_no_gradient():
    """Under torchrun a rank's documents may all end before the step's window: the loss is still computed
    (the ranks' losses add up) and the head, which reads the pooled state, gets its gradient; nothing reaches
    the encoder."""
    model = classifier("mean").train()
    ids, lens = batch([13, 20], seed=2)  # 2 segments each
    model.zero_grad()
    loss, logits = backward_document(model, ids, lens, lambda z: F.cross_entropy(z, torch.tensor([0, 1])),
                                     window=2, first=3)
    assert torch.isfinite(loss) and logits.shape == (2, N_LABELS)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.transformer.parameters())
    assert model.head.weight.grad.abs().sum() > 0


def _order_task(n: int, seed: int, seg: int):
    """Two segments of random tokens, cue 1 in one and cue 2 in the other: the label is which comes first. Each
    segment alone holds one cue, whatever the label: only memory across the boundary tells the order."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 53, (n, 2 * seg), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    first, second = torch.randint(0, seg, (n,), generator=g), seg + torch.randint(0, seg, (n,), generator=g)
    rows = torch.arange(n)
    ids[rows, first], ids[rows, second] = 1 + y, 2 - y
    return ids, y


def _train_order_model(mem_len: int, seg: int) -> TXLDocumentClassifier:
    torch.manual_seed(0)
    model = TXLDocumentClassifier(tiny_config(num_labels=2, pooling="mean", segment_len=seg, mem_len=mem_len))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = _order_task(2048, 0, seg)
    for step in range(200):
        i = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(step))
        loss = F.cross_entropy(model(x[i]).logits, y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_memory_carries_to_the_label_what_no_segment_holds_alone():
    seg = 4
    x, y = _order_task(512, 1, seg)

    def accuracy(model, mem_len):
        model.config.mem_len = mem_len
        with torch.no_grad():
            return (model(x).logits.argmax(-1) == y).float().mean().item()

    with_memory, without = _train_order_model(seg, seg), _train_order_model(0, seg)
    assert accuracy(without, 0) < 0.62  # chance: the pooled segments are alike for both labels
    assert accuracy(with_memory, seg) > 0.9
    assert accuracy(with_memory, 0) < 0.62  # the same weights, the memory taken away
