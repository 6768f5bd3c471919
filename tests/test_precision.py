"""`prefopt eval --precision`: auto keeps fp32 on a CPU; bf16 weights give fp32's log-probs to bf16's precision."""

import json

import pytest
import torch

from conftest import invoke


def test_precision_picks_the_dtype(monkeypatch):
    from prefopt.evaluate import eval_dtype

    assert eval_dtype("fp32") == torch.float32 and eval_dtype("bf16") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert eval_dtype("auto") == torch.float32


def test_bf16_eval_scores_like_fp32(sft_run, rag_data, tmp_path):
    from prefopt.evaluate import load_for_eval
    from prefopt.scoring import mean_logps, pair_texts

    rows = [json.loads(line) for line in (rag_data / "test.jsonl").read_text().splitlines()][:4]
    logps = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        tokenizer, model, _, _ = load_for_eval(str(sft_run), precision=precision)
        assert {p.dtype for p in model.parameters()} == {dtype}
        prompts, chosen, _ = zip(*(pair_texts(tokenizer, r) for r in rows))
        with torch.no_grad():
            logps[precision] = mean_logps(model, tokenizer, list(prompts), list(chosen))
    # mean per-token log-probs agree to bf16's 8 bits of mantissa, not exactly
    assert logps["bf16"] == pytest.approx(logps["fp32"], rel=0.05) and logps["bf16"] != logps["fp32"]
    out = tmp_path / "eval"
    invoke("eval", "--models", str(sft_run), "--data", str(rag_data / "test.jsonl"), "--output-dir", str(out),
           "--limit", "4", "--max-new-tokens", "8", "--precision", "bf16")
    summary = json.loads((out / "eval.json").read_text())
    assert summary["dtype"] == "bfloat16" and summary["results"][str(sft_run)]["n_pairs"] == 4
