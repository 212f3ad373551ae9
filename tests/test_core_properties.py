"""Properties of the Transformer-XL core that must hold for any weights: shifts, masks, causality, memory,
losses, configuration, checkpoints, and that it can learn at all.

Tiny seeded configs from conftest (sizes pairwise distinct); weights perturbed to O(1) so every path matters.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import BSZ, QLEN, perturb, random_ids, tiny_config

import txl_core
from txl_core import CheckpointError, TXLConfig, TXLLMHeadModel, TXLModel, load_pretrained
from txl_core.attention import attention_mask, rel_shift
from txl_core.classifier import TXLDocumentClassifier
from txl_core.embedding import PositionalEmbedding


def lm(**overrides) -> TXLLMHeadModel:
    return perturb(TXLLMHeadModel(tiny_config(**overrides))).eval()


def assert_same(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


# --- rel_shift and the attention mask -----------------------------------------------------------------------


@pytest.mark.parametrize("qlen,mlen", [(1, 0), (5, 0), (5, 3), (4, 7), (6, 6)])
def test_rel_shift_matches_naive_loop(qlen, mlen):
    klen = qlen + mlen
    x = torch.randn(2, 3, qlen, klen)  # (B, H, T, K)
    shifted = rel_shift(x)
    assert shifted.shape == x.shape
    for i in range(qlen):
        for j in range(mlen + i + 1):  # every key a query may see: the rest is masked
            assert_same(shifted[..., i, j], x[..., i, j + qlen - 1 - i], atol=0)
            # column c of the raw scores holds distance K-1-c; shifted column j is the distance (mlen+i)-j
            assert klen - 1 - (j + qlen - 1 - i) == mlen + i - j


def naive_mask(*, qlen, mlen, mem_len, same_length):
    """Query i sits at absolute position p = mlen + i; it never sees the future, and with same_length it sees
    only the last mem_len positions (itself included)."""
    mask = torch.zeros(qlen, mlen + qlen, dtype=torch.bool)
    for i in range(qlen):
        p = mlen + i
        for j in range(mlen + qlen):
            mask[i, j] = j > p or (same_length and j <= p - mem_len)
    return mask


@pytest.mark.parametrize("same_length", [False, True])
@pytest.mark.parametrize("qlen,mlen,mem_len", [
    (6, 0, 8), (6, 0, 6), (6, 0, 4), (6, 8, 8), (6, 4, 8), (6, 3, 3), (3, 5, 5), (6, 0, 0), (5, 7, 2),
])
def test_attention_mask_matches_definition(qlen, mlen, mem_len, same_length):
    ours = attention_mask(qlen=qlen, mlen=mlen, mem_len=mem_len, same_length=same_length)
    assert ours.dtype == torch.bool and ours.shape == (qlen, mlen + qlen)
    assert torch.equal(ours, naive_mask(qlen=qlen, mlen=mlen, mem_len=mem_len, same_length=same_length))


def test_same_length_short_memory_is_a_sliding_window_inside_the_segment():
    mask = attention_mask(qlen=6, mlen=0, mem_len=2, same_length=True)
    assert (~mask).sum(1).tolist() == [1, 2, 2, 2, 2, 2]  # each query sees at most mem_len keys


# --- causality and memory -----------------------------------------------------------------------------------


@pytest.mark.parametrize("same_length", [False, True])
@pytest.mark.parametrize("with_memory", [False, True])
def test_a_future_token_never_changes_earlier_outputs(same_length, with_memory):
    model = lm(same_length=same_length)
    ids = random_ids(BSZ, 2 * QLEN)
    t = 4
    changed = ids.clone()
    changed[:, QLEN + t] = (changed[:, QLEN + t] + 7) % 53
    with torch.no_grad():
        for fused in (False, True):
            outs = []
            for x in (ids, changed):
                mems = model(x[:, :QLEN]).mems if with_memory else None
                out = model(x[:, QLEN:], mems=mems, output_attentions=not fused)
                outs.append(out)
            a, b = outs
            assert_same(a.logprobs[:, :t], b.logprobs[:, :t], atol=0)
            assert (a.logprobs[:, t:] - b.logprobs[:, t:]).abs().amax(-1).min() > 1e-4  # the change does arrive
            if not fused:
                mlen = a.attentions[0].size(-1) - QLEN
                assert mlen == (model.config.mem_len if with_memory else 0)
                future = torch.triu(torch.ones(QLEN, mlen + QLEN, dtype=torch.bool), diagonal=1 + mlen)
                assert torch.all(a.attentions[0][..., future] == 0)


def test_changing_memory_changes_outputs_but_not_the_other_row():
    model = lm()
    ids = random_ids(BSZ, 2 * QLEN, seed=1)
    with torch.no_grad():
        mems = model(ids[:, :QLEN]).mems
        other = [m.clone() for m in mems]
        other[1][0] += 1.0  # row 0 of layer 1's memory
        a, b = model(ids[:, QLEN:], mems=mems), model(ids[:, QLEN:], mems=other)
    assert (a.logprobs[0] - b.logprobs[0]).abs().max() > 1e-3
    assert_same(a.logprobs[1], b.logprobs[1], atol=0)


def test_empty_memory_equals_no_memory():
    model = lm()
    cfg, ids = model.config, random_ids(BSZ, QLEN)
    empty = txl_core.empty_mems(cfg, BSZ)
    assert len(empty) == cfg.n_layer and all(m.shape == (BSZ, 0, cfg.d_model) for m in empty)
    ref = txl_core.reference_mems(cfg, BSZ)
    assert len(ref) == cfg.n_layer and all(m.shape == (BSZ, cfg.mem_len, cfg.d_model) and not m.any() for m in ref)
    with torch.no_grad():
        none, zero_len, zeros = model(ids, mems=None), model(ids, mems=empty), model(ids, mems=ref)
    assert_same(none.logprobs, zero_len.logprobs, atol=0)
    for a, b in zip(none.mems, zero_len.mems):
        assert_same(a, b, atol=0)
    assert all(m.shape == (BSZ, cfg.mem_len, cfg.d_model) for m in none.mems)  # keeps the last M of T > M
    # the reference's zero memory is attended to: it is not the same as no memory
    assert (none.logprobs - zeros.logprobs).abs().max() > 1e-3


def test_memory_update_keeps_the_last_mem_len_steps_detached():
    cfg = tiny_config()
    hids = [torch.randn(BSZ, 4, cfg.d_model, requires_grad=True) for _ in range(cfg.n_layer)]
    mems = [torch.randn(BSZ, 6, cfg.d_model) for _ in range(cfg.n_layer)]
    new = txl_core.update_mems(hids, mems, mem_len=cfg.mem_len)
    for h, m, n in zip(hids, mems, new):
        assert n.shape == (BSZ, cfg.mem_len, cfg.d_model) and not n.requires_grad
        assert_same(n, torch.cat([m, h.detach()], 1)[:, -cfg.mem_len:], atol=0)


@pytest.mark.parametrize("same_length", [False, True])
def test_segments_with_memory_equal_one_piece_when_memory_holds_the_document(same_length):
    """With mem_len >= the document length every segment sees the whole past, exactly as one long forward."""
    n_seg = 3
    model = lm(mem_len=n_seg * QLEN, same_length=same_length, clamp_len=13)
    ids = random_ids(BSZ, n_seg * QLEN, seed=2)
    with torch.no_grad():
        whole = model.transformer(ids)
        mems, pieces = None, []
        for s in range(n_seg):
            out = model.transformer(ids[:, s * QLEN:(s + 1) * QLEN], mems=mems)
            mems = out.mems
            pieces.append(out.last_hidden_state)
    torch.testing.assert_close(torch.cat(pieces, 1), whole.last_hidden_state, rtol=1e-5, atol=1e-5)
    for a, b in zip(mems, whole.mems):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_segments_differ_from_one_piece_when_memory_is_short():
    model = lm(mem_len=3)
    ids = random_ids(BSZ, 2 * QLEN, seed=2)
    with torch.no_grad():
        whole = model.transformer(ids).last_hidden_state[:, QLEN:]
        first = model.transformer(ids[:, :QLEN])
        second = model.transformer(ids[:, QLEN:], mems=first.mems).last_hidden_state
    assert (whole - second).abs().max() > 1e-3


# --- the LM head: log-probabilities and losses --------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    dict(),  # div_val 2, d_embed != d_model
    dict(d_embed=24),  # div_val 2, d_embed == d_model (square projections)
    dict(div_val=1, d_embed=32),  # one embedding, projected
    dict(div_val=1, d_embed=24),  # one embedding, no projection
    dict(div_val=1, cutoffs=[], d_embed=32),  # no clusters at all
    dict(div_val=3, cutoffs=[], d_embed=32),
], ids=["dv2-proj", "dv2-square", "dv1-proj", "dv1-noproj", "plain-proj", "plain-dv3"])
def test_losses_are_next_token_nll_in_token_order(overrides):
    model = lm(**overrides)
    ids = random_ids(BSZ, QLEN, seed=3)
    with torch.no_grad():
        out = model(ids, labels=ids)
    assert out.logprobs.shape == (BSZ, QLEN, 53)
    assert_same(out.logprobs.logsumexp(-1), torch.zeros(BSZ, QLEN))  # a distribution over the vocabulary
    expected = -out.logprobs[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    assert out.losses.shape == (BSZ, QLEN - 1)
    assert_same(out.losses, expected)
    assert_same(out.loss, expected.mean())


@pytest.mark.parametrize("cutoffs", [[13, 31], []])
def test_ignored_labels_have_zero_loss_and_leave_the_mean(cutoffs):
    model = lm(cutoffs=cutoffs, div_val=2 if cutoffs else 1)
    ids = random_ids(BSZ, QLEN, seed=4)
    labels = ids.clone()
    labels[0, 3:6] = -100
    labels[1, 1] = -100  # position 0 predicts it
    with torch.no_grad():
        out = model(ids, labels=labels)
        full = model(ids, labels=ids)
    keep = labels[:, 1:] != -100
    assert torch.all(out.losses[~keep] == 0)
    assert_same(out.losses[keep], full.losses[keep])
    assert_same(out.loss, full.losses[keep].mean())
    with torch.no_grad():
        nothing = model(ids, labels=torch.full_like(ids, -100))
    assert nothing.loss == 0 and torch.all(nothing.losses == 0)


def test_embedding_and_softmax_shapes_follow_the_config():
    model = TXLLMHeadModel(tiny_config())  # div_val 2: widths 32, 16, 8 projected to 24
    emb = model.transformer.word_emb
    assert [tuple(layer.weight.shape) for layer in emb.emb_layers] == [(13, 32), (18, 16), (22, 8)]
    assert [tuple(p.shape) for p in emb.emb_projs] == [(24, 32), (24, 16), (24, 8)]
    plain = TXLLMHeadModel(tiny_config(div_val=1, cutoffs=[], d_embed=32))
    assert tuple(plain.transformer.word_emb.emb_projs[0].shape) == (24, 32)
    assert len(TXLLMHeadModel(tiny_config(div_val=1, d_embed=24)).transformer.word_emb.emb_projs) == 0


@pytest.mark.parametrize("div_val", [1, 2])
def test_adaptive_embedding_matches_its_definition(div_val):
    """Token t of cluster i embeds as sqrt(d_model) * P_i e_i[t - l_i] (sqrt of d_model, not d_embed)."""
    model = lm(div_val=div_val)  # d_embed 32 != d_model 24
    emb, ids = model.transformer.word_emb, random_ids(BSZ, QLEN, seed=11)
    with torch.no_grad():
        got = emb(ids)  # (B, T, C)
    bounds = [(0, 53)] if div_val == 1 else [(0, 13), (13, 31), (31, 53)]
    for b in range(BSZ):
        for t in range(QLEN):
            i = next(k for k, (left, right) in enumerate(bounds) if left <= ids[b, t] < right)
            vector = emb.emb_projs[i] @ emb.emb_layers[i].weight[ids[b, t] - bounds[i][0]]  # (C,)
            torch.testing.assert_close(got[b, t], vector.detach() * 24 ** 0.5, rtol=1e-5, atol=1e-5)


def test_last_layer_output_is_dropped_out_in_training():
    """As in the reference, dropout follows the last layer (and the embedding) in training, never in eval."""
    model = lm(dropout=0.5).transformer
    ids = random_ids(BSZ, QLEN, seed=12)
    out = model.train()(ids, output_hidden_states=True)
    zero = (out.last_hidden_state == 0).float().mean()
    assert 0.3 < zero < 0.7 and 0.3 < (out.hidden_states[0] == 0).float().mean() < 0.7
    assert (model.eval()(ids).last_hidden_state == 0).sum() == 0


def test_tied_weights_are_one_tensor():
    model = TXLLMHeadModel(tiny_config())  # tie_projs default [False, True, True]
    emb, crit = model.transformer.word_emb, model.crit
    for i in range(3):
        assert crit.out_layers[i].weight is emb.emb_layers[i].weight
    assert crit.out_projs[0] is not emb.emb_projs[0]
    assert crit.out_projs[1] is emb.emb_projs[1] and crit.out_projs[2] is emb.emb_projs[2]
    untied = TXLLMHeadModel(tiny_config(tie_word_embeddings=False, tie_projs=[False, False, False]))
    assert untied.crit.out_layers[0].weight is not untied.transformer.word_emb.emb_layers[0].weight


# --- config-driven variants ---------------------------------------------------------------------------------


def test_untie_r_false_shares_one_bias_pair():
    model = lm(untie_r=False)
    names = [n for n, _ in model.named_parameters() if n.endswith(("r_w_bias", "r_r_bias"))]
    assert names == ["transformer.r_w_bias", "transformer.r_r_bias"]
    assert not any(hasattr(layer.dec_attn, "r_w_bias") for layer in model.transformer.layers)
    ids = random_ids(BSZ, QLEN, seed=5)
    model(ids, labels=ids).loss.backward()
    assert model.transformer.r_w_bias.grad.abs().sum() > 0 and model.transformer.r_r_bias.grad.abs().sum() > 0
    untied = lm(untie_r=True)
    per_layer = [n for n, _ in untied.named_parameters() if n.endswith("r_w_bias")]
    assert len(per_layer) == untied.config.n_layer


@pytest.mark.parametrize("pre_lnorm", [False, True])
def test_pre_lnorm_puts_layer_norm_inside_the_residual(pre_lnorm):
    """With every sub-layer's output zeroed, pre-LN passes the embedding through unchanged; post-LN normalises."""
    model = lm(pre_lnorm=pre_lnorm).transformer
    with torch.no_grad():
        for layer in model.layers:
            layer.dec_attn.o_net.weight.zero_()
            layer.pos_ff.CoreNet[3].weight.zero_()
            layer.pos_ff.CoreNet[3].bias.zero_()
    ids = random_ids(BSZ, QLEN, seed=6)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        emb = model.word_emb(ids)
    x = emb
    if not pre_lnorm:
        for layer in model.layers:
            x = layer.pos_ff.layer_norm(layer.dec_attn.layer_norm(x))
    assert_same(out.last_hidden_state, x)
    if not pre_lnorm:
        assert (out.last_hidden_state - emb).abs().max() > 1e-3


def test_clamp_len_shares_embeddings_beyond_the_clamp():
    pos = PositionalEmbedding(24)
    klen, clamp = 20, 6
    clamped, free = pos(klen, clamp_len=clamp), pos(klen, clamp_len=0)  # row r is distance klen-1-r
    assert clamped.shape == (klen, 24)
    far = clamped[: klen - clamp]  # distances >= clamp
    assert_same(far, free[klen - 1 - clamp].expand_as(far), atol=0)
    assert_same(clamped[klen - clamp:], free[klen - clamp:], atol=0)
    assert torch.unique(free, dim=0).size(0) == klen  # unclamped: every distance its own embedding
    # in the model: with clamp 1, only "self" and "anything older" are distinguished
    ids = random_ids(BSZ, QLEN, seed=7)
    with torch.no_grad():
        a, b = lm(clamp_len=1)(ids).logprobs, lm(clamp_len=0)(ids).logprobs
    assert (a - b).abs().max() > 1e-3


# --- configuration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,needle", [
    (dict(cutoffs=[31, 13]), "cutoffs"),
    (dict(cutoffs=[13, 13]), "cutoffs"),
    (dict(cutoffs=[13, 53]), "cutoffs"),
    (dict(cutoffs=[0, 13]), "cutoffs"),
    (dict(pooling="median"), "pooling"),
    (dict(tie_projs=[False, True]), "tie_projs"),
    (dict(d_model=0), "d_model"),
    (dict(mem_len=-1), "mem_len"),
    (dict(dropout=1.0), "dropout"),
    (dict(num_labels=2, labels=["a", "b", "c"]), "label"),
])
def test_config_rejects_invalid_values(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        tiny_config(**overrides)


def test_config_json_round_trip():
    cfg = tiny_config(labels=["neg", "pos"], multi_label=True, pooling="attention", tie_projs=[True, False, True])
    text = cfg.to_json()
    assert json.loads(text)["labels"] == ["neg", "pos"]
    assert TXLConfig.from_json(text) == cfg
    assert cfg.num_labels == 2


def test_config_reads_a_reference_config_dict():
    hf = tiny_config().to_dict() | {"model_type": "transfo-xl", "tgt_len": 17, "adaptive": True,
                                     "architectures": ["TransfoXLLMHeadModel"]}
    del hf["segment_len"]
    assert TXLConfig.from_dict(hf).segment_len == 17
    with pytest.raises(ValueError, match="unknown keys"):
        TXLConfig.from_dict(tiny_config().to_dict() | {"d_modle": 3})


# --- checkpoints --------------------------------------------------------------------------------------------


def _outputs(model, ids):
    with torch.no_grad():
        if isinstance(model, TXLDocumentClassifier):
            return model(ids, torch.tensor([ids.size(1), 5])).logits
        if isinstance(model, TXLLMHeadModel):
            return model(ids).logprobs
        return model(ids).last_hidden_state


@pytest.mark.parametrize("cls,overrides", [
    (TXLModel, dict(untie_r=False)),
    (TXLLMHeadModel, dict()),
    (TXLLMHeadModel, dict(div_val=1, d_embed=32, cutoffs=[13, 31], tie_projs=[True, True, True])),
    (TXLDocumentClassifier, dict(num_labels=6, pooling="attention")),
], ids=["model", "lm", "lm-dv1", "classifier"])
def test_save_load_round_trip(tmp_path, cls, overrides):
    model = perturb(cls(tiny_config(**overrides))).eval()
    model.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    assert type(loaded) is cls and loaded.config == model.config and not loaded.training
    ids = random_ids(BSZ, QLEN, seed=8)
    assert_same(_outputs(loaded, ids), _outputs(model, ids), atol=0)
    if cls is TXLLMHeadModel:
        assert_tied(loaded)
        assert len(loaded.tied_pairs()) == len(model.tied_pairs()) > 0
    assert len(list(loaded.parameters())) == len(list(model.parameters()))


def assert_tied(model: TXLLMHeadModel):
    """Tied weights are one Parameter after loading, not two that merely share storage (which an optimizer
    would step twice)."""
    for head, emb in model.tied_pairs():
        assert model.get_parameter(head).data_ptr() == model.get_parameter(emb).data_ptr()
        assert model.get_parameter(head) is model.get_parameter(emb)


def _saved_lm(tmp_path):
    model = lm()
    model.save_pretrained(tmp_path)
    return model


def _one_line_error(tmp_path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_pretrained(tmp_path)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_missing_config_is_a_checkpoint_error(tmp_path):
    _saved_lm(tmp_path)
    (tmp_path / "config.json").unlink()
    assert "config.json" in _one_line_error(tmp_path)


def test_truncated_weights_are_a_checkpoint_error(tmp_path):
    _saved_lm(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "model.safetensors" in _one_line_error(tmp_path)


def test_config_not_matching_the_weights_is_a_checkpoint_error(tmp_path):
    _saved_lm(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["d_inner"] = 41
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert "do not match" in _one_line_error(tmp_path)


def test_invalid_config_and_missing_weights_are_checkpoint_errors(tmp_path):
    _saved_lm(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"pooling": "median"}))
    assert "pooling" in _one_line_error(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").unlink()
    assert "no weights" in _one_line_error(tmp_path)


def _reference_style_state_dict(model: TXLLMHeadModel) -> dict:
    """What the reference's `torch.save(model.state_dict())` holds: tied tensors under both names, the
    inv_freq buffer, and with untie_r=False every layer's alias of the shared biases."""
    state = dict(model.state_dict())  # already lists tied parameters under both names
    state["transformer.pos_emb.inv_freq"] = model.transformer.pos_emb.inv_freq.clone()
    for i in range(model.config.n_layer):
        state[f"transformer.layers.{i}.dec_attn.r_w_bias"] = model.transformer.r_w_bias
        state[f"transformer.layers.{i}.dec_attn.r_r_bias"] = model.transformer.r_r_bias
    return state


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_reference_pytorch_model_bin_loads(tmp_path, zipfile):
    model = lm(untie_r=False)
    state = _reference_style_state_dict(model)
    assert state["crit.out_layers.1.weight"].data_ptr() == state["transformer.word_emb.emb_layers.1.weight"].data_ptr()
    torch.save(state, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=zipfile)
    hf_config = model.config.to_dict() | {"architectures": ["TransfoXLLMHeadModel"], "model_type": "transfo-xl",
                                          "tgt_len": QLEN}
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    loaded = load_pretrained(tmp_path)
    assert isinstance(loaded, TXLLMHeadModel)
    ids = random_ids(BSZ, QLEN, seed=9)
    assert_same(_outputs(loaded, ids), _outputs(model, ids), atol=0)
    assert_tied(loaded)
    assert len(list(loaded.parameters())) == len(list(model.parameters()))


# --- learning -----------------------------------------------------------------------------------------------


def test_lm_overfits_one_batch():
    model = TXLLMHeadModel(tiny_config()).train()
    ids = random_ids(BSZ, 2 * QLEN, seed=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        opt.zero_grad()
        loss = model(ids, labels=ids, return_logprobs=False).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > math.log(13)  # the untrained head is close to uniform over its 13 + 2 entries
    assert losses[-1] < 0.5 * losses[0], losses


def test_inference_reuses_position_keys_until_the_weights_change():
    """In inference r_net(pos_emb) is cached per segment shape; a weight changed in place invalidates it."""
    model = perturb(TXLModel(tiny_config())).eval()
    ids = random_ids(BSZ, QLEN, seed=4)
    att = model.layers[0].dec_attn
    with torch.no_grad():
        first = model(ids).last_hidden_state
        assert len(att._r_cache) == 1
        assert torch.equal(model(ids).last_hidden_state, first)  # served from the cache
        att.r_net.weight.mul_(2)
        changed = model(ids).last_hidden_state
    assert (changed - first).abs().max() > 1e-3
    torch.testing.assert_close(changed, model(ids).last_hidden_state.detach(), rtol=0, atol=1e-5)  # uncached route
    model.load_state_dict({k: v * 1.5 for k, v in model.state_dict().items()})
    with torch.inference_mode():
        loaded = model(ids).last_hidden_state
    with torch.no_grad():
        torch.testing.assert_close(loaded, model.train()(ids).last_hidden_state, rtol=0, atol=1e-5)  # tiny: no dropout
    stamp = att.weights_stamp()
    model.eval().to(torch.bfloat16).float()  # a cast and back: the same parameter objects, rounded values
    # ... and the same version counters, possibly at the old addresses: the cast itself must forget
    assert len(att._r_cache) == 0 and att.weights_stamp() != stamp
    with torch.no_grad():
        rounded = model(ids).last_hidden_state
    torch.testing.assert_close(rounded, model(ids).last_hidden_state.detach(), rtol=0, atol=1e-5)
    assert (rounded - loaded).abs().max() > 1e-4  # the rounding shows: a stale R would not be caught otherwise
