"""`txl bench`: the quick run writes its table and JSON with every expected row (a smoke test so that the bench
cannot rot; no timing is asserted, only that the numbers are there and positive), and the table replaces the
previous one between its markers without touching the rest of RESULTS.md."""
from __future__ import annotations

import json

import pytest

from pipelines.cli import main
from pipelines.commands.bench import END, HEADING, START, load_bench, write_markdown

OTHER_SECTIONS = "# Benchmarks\n\n## Accuracy\n\nkept above\n"


def _run_quick(tmp_path, *extra: str):
    md, js = tmp_path / "RESULTS.md", tmp_path / "bench.json"
    md.write_text(f"{OTHER_SECTIONS}\n{HEADING}\n\n{START}\nold table\n{END}\n\n## Later\n\nkept below\n")
    code = main(["bench", "--quick", "--threads", "1", "--out-md", str(md), "--out-json", str(js), *extra])
    assert code == 0
    return md.read_text(), json.loads(js.read_text())


@pytest.mark.slow
def test_quick_bench_writes_every_row(tmp_path):
    text, res = _run_quick(tmp_path)
    plan = load_bench().QUICK
    assert "old table" not in text and "kept above" in text and "kept below" in text
    assert text.count(START) == text.count(END) == text.count(HEADING) == 1
    assert res["ceiling"]["float32"] > 0 and res["ceiling"]["bf16"] > 0

    rows = res["throughput"]["rows"]
    assert [(r["precision"], r["doc_tokens"], r["batch"]) for r in rows] == [
        (p, n, b) for p in ("float32", "bf16", "int8") for n in plan.doc_lens for b in plan.batches]
    assert all(r["tokens_per_s"] > 0 and r["gflops"] > 0 and r["tokens"] > 0 for r in rows)
    assert all(f"\n| {r['precision']} | {r['doc_tokens']:,} | {r['batch']} |" in text for r in rows)
    assert 0 <= res["throughput"]["closeness"]["int8"] < 1

    memory = res["memory"]["rows"]
    assert [(r["run"], r["doc_tokens"]) for r in memory] == \
        [("inference", n) for n in plan.infer_mem] + [("train", n) for n in plan.train_mem]
    assert all(r["peak_mb"] >= r["baseline_mb"] > 0 for r in memory)

    assert [r["what"] for r in res["e2e"]["rows"]] == ["classify float32", "classify bf16", "classify int8",
                                                         "train float32"]
    assert all(r["rate"] > 0 for r in res["e2e"]["rows"])

    accuracy = res["accuracy"]
    if "skipped" not in accuracy:  # ../shared is beside the repo: the bundled model on bbc_news documents
        assert [r["precision"] for r in accuracy["rows"]] == ["float32", "bf16", "int8"]
        assert accuracy["rows"][0]["max_prob_diff"] == 0 and accuracy["docs"] == 20
        assert all(0 <= r["accuracy"] <= 100 and r["max_prob_diff"] < 0.2 for r in accuracy["rows"])

    reference = res["reference"]
    if "skipped" not in reference:  # .refenv exists: same weights, so the first segment agrees
        assert [(r["doc_tokens"], r["batch"]) for r in reference["rows"]] == \
            [(n, b) for n in plan.doc_lens for b in plan.batches]
        assert all(r["ours"] > 0 and r["reference"] > 0 and r["max_abs_diff"] < 1e-4 for r in reference["rows"])
        assert all(set(r["fast"]) == {"bf16", "int8"} and len(r["fast"]["bf16"]["pair_ratios"]) == plan.repeats
                   and r["fast"]["int8"]["ratio"] > 0 for r in reference["rows"])
        assert "(float32)" in text and "fastest path is the faster of bf16 and int8 in those rounds" in text


def test_a_reference_table_of_an_earlier_run_still_renders():
    """A bench.json whose reference rounds lack the fast paths takes them from the throughput table."""
    old = {"rows": [{"doc_tokens": 4096, "batch": 8, "ours": 7000.0, "reference": 2000.0, "ratio": 3.5,
                     "pair_ratios": [3.4, 3.6], "max_abs_diff": 1e-6, "load": 1.0}]}
    from pipelines.commands.bench import _reference
    text = "\n".join(_reference(old, {(4096, 8): (9000.0, "bf16")}))
    assert "| 9,000 (bf16) | 4.50x |" in text and "fastest precision of the throughput table" in text


@pytest.mark.slow
def test_sections_picks_parts(tmp_path):
    text, res = _run_quick(tmp_path, "--sections", "e2e")
    assert "e2e" in res and not {"throughput", "reference", "memory"} & set(res)
    assert "**e2e**" in text and "**throughput**" not in text


def test_unknown_section_is_a_usage_error(tmp_path, capsys):
    assert main(["bench", "--sections", "speed", "--out-md", str(tmp_path / "R.md")]) == 2
    assert "speed" in capsys.readouterr().err
    assert not (tmp_path / "R.md").exists()


def test_markdown_gets_heading_and_markers_once(tmp_path):
    path = tmp_path / "RESULTS.md"
    write_markdown(path, "first")
    path.write_text(path.read_text() + "\n## Someone else's section\n")
    write_markdown(path, "second")
    text = path.read_text()
    assert text.count(HEADING) == text.count(START) == 1
    assert "second" in text and "first" not in text and "Someone else's section" in text


def test_the_flop_count_is_what_a_segment_with_full_memory_runs():
    """`flops_per_token` against torch's own count of the products one segment runs once the memory is full
    (attention computed explicitly so that every product is visible to the counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from txl_core import TXLConfig, TXLModel

    bench = load_bench()
    cfg = TXLConfig(**bench.QUICK.model)
    model, t = TXLModel(cfg).eval(), cfg.segment_len
    ids = torch.randint(0, cfg.vocab_size, (2, 3 * t), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        mems = model(ids[:, t:2 * t], mems=model(ids[:, :t]).mems).mems
        with FlopCounterMode(display=False) as counter:
            model(ids[:, 2 * t:], mems=mems, output_attentions=True)
    assert counter.get_total_flops() == bench.flops_per_token(cfg) * ids.size(0) * t
    assert bench.flops_per_token(cfg, kept_kv=False) == bench.flops_per_token(cfg) + 4 * cfg.mem_len * cfg.d_model \
        * cfg.n_head * cfg.d_head * cfg.n_layer / t
