"""Reference checkpoints as Hugging Face writes them after a round trip: generic config keys, and every tied
projection stored (div_val 1, d_embed != d_model) instead of deduplicated."""
from __future__ import annotations

import json
import shutil

import torch
from conftest import FIXTURE_GOLDEN
from safetensors.torch import load_file

import txl_core


def test_generic_hf_config_keys_are_ignored(tmp_path):
    ckpt = shutil.copytree(FIXTURE_GOLDEN / "ckpt_small_sl1_ur1", tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config.update(_name_or_path="transfo-xl-wt103", use_cache=True, bos_token_id=None)
    (ckpt / "config.json").write_text(json.dumps(config))
    assert isinstance(txl_core.load_pretrained(ckpt), txl_core.TXLLMHeadModel)


def test_div_val_1_projections_tie_to_the_one_input_projection(tmp_path):
    src = FIXTURE_GOLDEN / "ckpt_small_dproj"
    model = txl_core.load_pretrained(src)
    emb = model.transformer.word_emb.emb_projs[0]
    assert len(model.crit.out_projs) == 3 and model.config.tie_projs == [False, True, True]
    assert model.crit.out_projs[1] is emb and model.crit.out_projs[2] is emb and model.crit.out_projs[0] is not emb
    # the same weights with every tied duplicate written out, as torch.save(state_dict) does
    state = load_file(str(src / "model.safetensors"))
    for i in (1, 2):
        state[f"crit.out_projs.{i}"] = state["transformer.word_emb.emb_projs.0"]
    state["crit.out_layers.0.weight"] = state["transformer.word_emb.emb_layers.0.weight"]
    (tmp_path / "bin").mkdir()
    shutil.copy(src / "config.json", tmp_path / "bin" / "config.json")
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    again = txl_core.load_pretrained(tmp_path / "bin")
    ids = torch.arange(0, 1000, 37).view(1, -1)
    torch.testing.assert_close(again(ids).logprobs, model(ids).logprobs, rtol=0, atol=0)
