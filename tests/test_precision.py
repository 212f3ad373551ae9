"""The bf16 CPU fast path: `prepare` puts the encoder in bf16 for inference, keeps the pooling and the head in
float32, changes no prediction beyond bf16 rounding, and never touches the weights of a model being trained
or saved."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import perturb, random_ids, tiny_config
from safetensors import safe_open

from pipelines.model.inference import predict, prepare
from pipelines.model.model_dir import ModelDir, load_model_dir
from pipelines.training.recipe import Recipe
from pipelines.training.trainer import Trainer
from tests.tiny_model import make_model_dir
from txl_core.classifier import TXLDocumentClassifier

TEXTS = ["the markets rallied on strong earnings " * 40, "a late goal won the cup final " * 7, "new phone " * 90]


def _model_dir(tmp_path, pooling: str) -> ModelDir:
    md = load_model_dir(make_model_dir(tmp_path / "m"))
    config = md.model.config
    config.pooling = pooling
    torch.manual_seed(0)
    md.model = perturb(TXLDocumentClassifier(config), scale=0.3)
    return md


@pytest.mark.parametrize("pooling", ["mean", "max", "attention", "last"])
def test_bf16_inference_stays_close_to_float32(tmp_path, pooling):
    md = _model_dir(tmp_path, pooling)
    f32 = predict(prepare(copy.deepcopy(md), precision="float32", device="cpu"), TEXTS, explain=True)
    fast = prepare(md, precision="bf16", device="cpu")
    encoder = {p.dtype for p in fast.model.transformer.parameters()}
    head = {p.dtype for n, p in fast.model.named_parameters() if not n.startswith("transformer.")}
    assert encoder == {torch.bfloat16} and head == {torch.float32}
    bf16 = predict(fast, TEXTS, explain=True)
    for a, b in zip(f32, bf16):
        assert a.n_tokens == b.n_tokens > 0
        assert max(abs(a.probs[k] - b.probs[k]) for k in a.probs) < 0.03
        assert [(s.start, s.end) for s in a.segments] == [(s.start, s.end) for s in b.segments]
    # the probabilities moved, so the bf16 path really ran
    assert any(a.probs != b.probs for a, b in zip(f32, bf16))


def test_bf16_memory_and_states_match_float32_segment_by_segment():
    """The recurrence in bf16: a 4-segment read keeps the hidden states within bf16 rounding of float32."""
    torch.manual_seed(0)
    model = perturb(TXLDocumentClassifier(tiny_config(pooling="mean", num_labels=3)), scale=0.3).eval()
    ids = random_ids(2, 44)
    with torch.inference_mode():
        ref = model(ids).pooled
        fast = copy.deepcopy(model)
        fast.transformer.to(torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fast(ids).pooled
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.05, rtol=0.05) and not torch.equal(out, ref)


def test_keep_weights_leaves_a_training_model_float32(tmp_path):
    md = _model_dir(tmp_path, "mean")
    prepare(md, precision="bf16", device="cpu", keep_weights=True)
    assert {p.dtype for p in md.model.parameters()} == {torch.float32}


def test_evaluating_during_bf16_training_keeps_float32_weights(tmp_path):
    md = _model_dir(tmp_path, "mean")
    ids = [e.ids for e in md.tokenizer.encode_batch(TEXTS)]
    trainer = Trainer(md, Recipe(batch_size=2, epochs=1, precision="bf16"), train_ids=ids,
                      train_y=torch.tensor([0, 1, 2]), valid_texts=TEXTS, valid_labels=md.labels, out=tmp_path / "o",
                      device=torch.device("cpu"))
    trainer.step([0, 1])
    trainer.evaluate(TEXTS, md.labels)
    assert {p.dtype for p in md.model.parameters()} == {torch.float32}
    trainer.step([1, 2])  # still trains: the optimizer's float32 state fits the weights


def test_a_model_trained_in_bf16_is_saved_in_float32(tmp_path):
    from pipelines.cli import main
    from tests.synth import make_corpus

    data = tmp_path / "train.csv"
    make_corpus(90, seed=1).to_csv(data, index=False)
    out = tmp_path / "model"
    assert main(["train", "--train", str(data), "--test", str(data), "--out", str(out), "--epochs", "1",
                 "--d-model", "16", "--n-layer", "1", "--n-head", "2", "--d-inner", "32", "--vocab-size", "300",
                 "--segment-len", "32", "--mem-len", "32", "--precision", "bf16"]) == 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    training = json.loads((out / "metrics.json").read_text())["training"]
    assert (training["precision"], training["device"]) == ("bf16", "cpu")  # what the weights were trained in


def test_the_position_frequencies_stay_float32_in_a_bf16_encoder():
    """Cast to bf16, a frequency keeps 8 bits: at distance 511 its sinusoid's argument would be off by up to
    half a radian. The bf16 encoder's sinusoids must be the float32 ones, rounded once at the end."""
    from txl_core import TXLModel
    from txl_core.embedding import PositionalEmbedding
    exact = PositionalEmbedding(64)(512, clamp_len=0)  # (512, 64)
    half = TXLModel(tiny_config(d_model=64, n_head=4, d_head=16)).to(torch.bfloat16).pos_emb
    assert half.inv_freq.dtype == torch.float32
    assert torch.equal(half(512, clamp_len=0).to(torch.bfloat16), exact.to(torch.bfloat16))
    rounded = PositionalEmbedding(64)
    rounded.inv_freq = rounded.inv_freq.to(torch.bfloat16).float()  # what a plain bf16 cast would leave
    assert (rounded(512, clamp_len=0) - exact).abs().max() > 0.1  # so the test can fail


def test_auto_never_picks_bf16_on_a_cpu_without_bf16_units(monkeypatch):
    """torch's oneDNN check passes on any AVX-512 CPU; without AVX512-BF16/AMX units bf16 is emulated (the
    encoder ran at 0.37x the reference's speed on an AVX2-only CPU), so `auto` reads the units themselves."""
    from pathlib import Path

    import torch

    from pipelines.runtime import device as device_module
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("Linux only")
    monkeypatch.setattr(device_module, "cpu_has_bf16_units", lambda: False)
    assert not device_module.cpu_has_native_bf16()
    cpu = torch.device("cpu")
    assert device_module.resolve_precision("auto", cpu) == "float32"
    assert device_module.resolve_precision("auto", cpu, training=True) == "float32"
