"""Inference attaches to the memory it returns the keys and values of its rows (`Memory.kv`, kept_kv.py), so
each segment the caller hands that memory back with projects only its own rows. The results must equal projecting the memory rows again, and the
kept values must never be served for a memory or weights that changed.
"""
from __future__ import annotations

import pytest
import torch
from conftest import perturb, random_ids, tiny_config

from txl_core import TXLModel
from txl_core.classifier import TXLDocumentClassifier


def kept_layers(mems) -> int:
    """How many layers of a memory carry kept keys and values."""
    return sum(entry is not None for entry in (getattr(mems, "kv", None) or []))


def read(model, segments, *, keep: bool):
    """Hidden states of consecutive segments; without `keep` the memory is cloned, so nothing kept is found."""
    mems, outs = None, []
    for ids in segments:
        out = model(ids, mems=mems if keep or mems is None else [m.clone() for m in mems])
        mems = out.mems
        outs.append(out.last_hidden_state)
    return torch.cat(outs, dim=1), mems


def projected_rows(model) -> list[int]:
    """Record how many rows each layer's `qkv_net` module projects per call (the split projection of a memory
    that was not kept calls `F.linear` on its weight slices instead, and is not recorded)."""
    rows: list[int] = []
    for layer in model.layers:
        layer.dec_attn.qkv_net.register_forward_hook(lambda m, args, out: rows.append(args[0].size(1)))
    return rows


@pytest.mark.parametrize("overrides", [
    {},  # mem_len 7 < segment 9: the memory keeps the tail of the last segment
    {"mem_len": 20},  # longer than a segment: the memory grows over segments, kept rows are joined
    {"pre_lnorm": True, "same_length": True},
    {"bidirectional": True, "mem_len": 9},
    {"untie_r": False, "attn_bias": True, "ff_activation": "gelu"},
])
def test_kept_keys_and_values_give_the_same_states(overrides):
    model = perturb(TXLModel(tiny_config(**overrides))).eval()
    segments = [random_ids(2, 9, seed=s) for s in range(4)]
    with torch.no_grad():
        kept, kept_mems = read(model, segments, keep=True)
        again, again_mems = read(model, segments, keep=False)
    torch.testing.assert_close(kept, again, rtol=0, atol=1e-5)
    for a, b in zip(kept_mems, again_mems):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_after_the_first_segment_only_the_segment_rows_are_projected():
    model = perturb(TXLModel(tiny_config(mem_len=20))).eval()
    rows = projected_rows(model)
    with torch.inference_mode():
        read(model, [random_ids(2, 9, seed=s) for s in range(3)], keep=True)
    assert rows == [9] * 9  # 3 layers x 3 segments: the 9 then 18 memory rows are never projected again


def test_training_and_gradients_keep_nothing():
    model = perturb(TXLModel(tiny_config())).eval()
    out = model(random_ids(2, 9))  # gradients on: the memory may be what a caller back-propagates through
    assert kept_layers(out.mems) == 0
    with torch.no_grad():
        assert kept_layers(model.train()(random_ids(2, 9), mems=out.mems).mems) == 0


def test_a_memory_changed_in_place_is_projected_again():
    model = perturb(TXLModel(tiny_config())).eval()
    first, second = random_ids(2, 9, seed=1), random_ids(2, 9, seed=2)
    with torch.no_grad():
        mems = model(first).mems
        for m in mems:
            m.mul_(1.5)
        got = model(second, mems=mems).last_hidden_state
        expected = model(second, mems=[m.clone() for m in mems]).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_weights_changed_in_place_or_loaded_are_not_served_stale():
    model = perturb(TXLModel(tiny_config())).eval()
    first, second = random_ids(2, 9, seed=1), random_ids(2, 9, seed=2)
    with torch.no_grad():
        mems = model(first).mems
        model.layers[1].dec_attn.qkv_net.weight.mul_(1.5)
        got = model(second, mems=mems).last_hidden_state
        expected = model(second, mems=[m.clone() for m in mems]).last_hidden_state
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        mems = model(first).mems
        model.load_state_dict({k: v * 0.8 for k, v in model.state_dict().items()})
        got = model(second, mems=mems).last_hidden_state
        expected = model(second, mems=[m.clone() for m in mems]).last_hidden_state
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        mems = model(first).mems
        stamp = model.layers[0].dec_attn.weights_stamp()
        model.to(torch.bfloat16).float()  # the same parameters and version counters, rounded values
        assert model.layers[0].dec_attn.weights_stamp() != stamp  # even if the new values reuse the old address
        got = model(second, mems=mems).last_hidden_state
        expected = model(second, mems=[m.clone() for m in mems]).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_kept_values_go_with_their_memory():
    """The caller owns them: the memory returned carries one entry per layer, a copy of it carries none."""
    model = perturb(TXLModel(tiny_config())).eval()
    with torch.no_grad():
        mems = model(random_ids(2, 9)).mems
        assert kept_layers(mems) == 3
        assert kept_layers([m.clone() for m in mems]) == 0 and kept_layers(list(mems)) == 0


def test_documents_leaving_the_batch_keep_their_neighbours_memory_rows():
    """The classifier drops finished documents from the batch; the rest keep their kept rows (select_mems)."""
    model = perturb(TXLDocumentClassifier(tiny_config(num_labels=3, pooling="mean", segment_len=4))).eval()
    rows = projected_rows(model.transformer)
    lengths = torch.tensor([13, 5, 9])
    ids = random_ids(3, 13, seed=3)
    with torch.inference_mode():
        batched = model(ids, lengths).logits
    # 3 layers x 4 segments (the last one token wide): no memory row projected again, across both selections
    assert rows == [4] * 3 * 3 + [1] * 3
    with torch.no_grad():
        alone = torch.cat([model(ids[b:b + 1, :n]).logits for b, n in enumerate(lengths.tolist())])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)


def test_bf16_models_keep_rows_and_int8_models_do_not():
    """Dynamic int8 scales a product's input per call: a row's keys would depend on the rows projected with it,
    so an int8 model projects the memory rows as before (its numbers stay those the bench measured)."""
    from pipelines.model.inference import to_bf16
    segments = [random_ids(2, 9, seed=s) for s in range(3)]
    half = to_bf16(perturb(TXLModel(tiny_config())).eval())
    with torch.inference_mode():
        kept, mems = read(half, segments, keep=True)
        again, _ = read(half, segments, keep=False)
    assert kept_layers(mems) == 3
    torch.testing.assert_close(kept.float(), again.float(), rtol=0, atol=0.05)
    quantized = torch.ao.quantization.quantize_dynamic(perturb(TXLModel(tiny_config())).eval(), {torch.nn.Linear},
                                                       dtype=torch.qint8)
    with torch.inference_mode():
        kept, mems = read(quantized, segments, keep=True)
        again, _ = read(quantized, segments, keep=False)
    assert kept_layers(mems) == 0
    assert torch.equal(kept, again)


def test_copies_and_pickles_never_use_rows_kept_for_the_original():
    import copy
    import io
    model = perturb(TXLModel(tiny_config())).eval()
    with torch.no_grad():
        out = model(random_ids(2, 9))
        twin = copy.deepcopy(model)
        assert kept_layers(out.mems) == 3  # the twin's weights are other tensors: it projects the rows again
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        expected = model(random_ids(2, 9, seed=5), mems=out.mems).last_hidden_state
        for other in (twin, loaded):
            torch.testing.assert_close(other(random_ids(2, 9, seed=5), mems=out.mems).last_hidden_state, expected,
                                       rtol=0, atol=1e-5)
