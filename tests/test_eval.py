"""`prefopt eval` on the tiny model: eval.json keys, eval.md, the PNG chart, DPO reward metrics, and the
answer metrics wired to real triples (with a stand-in generator that answers like chosen / rejected)."""

import json
import shutil

import pytest
import yaml

from conftest import invoke

METRICS = {"pref_accuracy", "answer_accuracy", "exact_match", "f1", "quote_precision", "quote_rate",
           "distractor_rate", "wrong_from_distractor", "yesno_accuracy", "n_pairs", "n_questions", "n_quotes", "n_yesno"}


def fake_dpo_run(sft_run, out, scale=0.05, beta=0.5):
    """A DPO run dir without training: the SFT run's files, stage dpo, parent = the SFT run, and an adapter
    whose weights are perturbed (scale 0: B = 0, so the policy equals the reference)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(sft_run, out)
    run = json.loads((out / "run.json").read_text())
    run.update(stage="dpo", parent=str(sft_run.resolve()))
    (out / "run.json").write_text(json.dumps(run))
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg.update(loss="ipo", beta=beta, model=str(sft_run))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    g = torch.Generator().manual_seed(1)
    weights = load_file(out / "adapter_model.safetensors")
    for k, v in weights.items():
        if "lora_B" in k:
            weights[k] = torch.randn(v.shape, generator=g) * scale
        else:
            weights[k] = torch.randn(v.shape, generator=g) * 0.1
    save_file(weights, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out


def test_eval_cli_writes_json_table_and_chart(tiny_model, sft_run, rag_data, tmp_path):
    dpo = fake_dpo_run(sft_run, tmp_path / "dpo")
    out = tmp_path / "eval"
    result = invoke("eval", "--models", tiny_model, str(sft_run), str(dpo), "--data", str(rag_data / "test.jsonl"),
                    "--output-dir", str(out), "--limit", "4", "--max-new-tokens", "8", "--batch-size", "2")
    summary = json.loads((out / "eval.json").read_text())
    results = summary["results"]
    assert list(results) == [tiny_model, str(sft_run), str(dpo)]
    for name, m in results.items():
        assert METRICS <= set(m), name
        assert m["n_pairs"] == 4 and m["n_questions"] == 4
        for k in ("pref_accuracy", "answer_accuracy", "exact_match", "f1"):
            assert 0 <= m[k] <= 1
    assert results[tiny_model].get("reward_accuracy") is None and results[str(sft_run)].get("reward_accuracy") is None
    d = results[str(dpo)]
    assert 0 <= d["reward_accuracy"] <= 1 and d["reward_margin"] != 0 and d["reward_beta"] == 0.5
    png = (out / "eval.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and summary["chart"] == "eval.png"
    table = (out / "eval.md").read_text()
    assert table.startswith("| model |") and "reward_acc" in table and "EM" in table and "F1" in table
    assert "prefopt eval" in result.output and len((out / "generations.jsonl").read_text().splitlines()) == 12
    # --no-scores skips the log-prob scoring only: the same generations and answer metrics, no pref/reward
    fast = tmp_path / "fast"
    invoke("eval", "--models", tiny_model, str(dpo), "--data", str(rag_data / "test.jsonl"), "--output-dir", str(fast),
           "--limit", "4", "--max-new-tokens", "8", "--batch-size", "2", "--no-scores")
    quick = json.loads((fast / "eval.json").read_text())["results"]
    for name in (tiny_model, str(dpo)):
        assert quick[name]["pref_accuracy"] is None and quick[name].get("reward_accuracy") is None
        assert {k: quick[name][k] for k in ("answer_accuracy", "f1", "n_questions")} == \
            {k: results[name][k] for k in ("answer_accuracy", "f1", "n_questions")}
    gens = lambda d: [r for r in map(json.loads, (d / "generations.jsonl").read_text().splitlines())  # noqa: E731
                      if r["model"] != str(sft_run)]
    assert [r["generated"] for r in gens(fast)] == [r["generated"] for r in gens(out)]


def test_dpo_reward_is_zero_when_the_policy_is_the_reference(sft_run, rag_data, tmp_path):
    from prefopt.evaluate import EvalConfig, score_model

    dpo = fake_dpo_run(sft_run, tmp_path / "dpo0", scale=0.0)  # B = 0: the DPO adapter changes nothing
    rows = [json.loads(line) for line in (rag_data / "test.jsonl").read_text().splitlines()][:3]
    m, _ = score_model(str(dpo), rows, EvalConfig(data="x", max_new_tokens=2))
    assert m["reward_margin"] == pytest.approx(0.0, abs=1e-4) and m["reward_accuracy"] == 0.0


def fake_full_dpo_run(tiny_model, out, beta=0.5):
    """A full-weights DPO run dir that did not move: the tiny model's files, stage dpo, weights full."""
    shutil.copytree(tiny_model, out)
    (out / "run.json").write_text(json.dumps({"stage": "dpo", "weights": "full", "base_model": tiny_model,
                                              "parent": None, "max_length": 512, "versions": {}}))
    (out / "config.yaml").write_text(yaml.safe_dump({"loss": "sigmoid", "beta": beta, "full": True, "lora_r": 16}))
    return out


def test_full_weights_dpo_run_is_scored_against_the_model_it_started_from(tiny_model, rag_data, tmp_path):
    from prefopt.evaluate import EvalConfig, score_model

    dpo = fake_full_dpo_run(tiny_model, tmp_path / "full")
    rows = [json.loads(line) for line in (rag_data / "test.jsonl").read_text().splitlines()][:2]
    m, _ = score_model(str(dpo), rows, EvalConfig(data="x", max_new_tokens=2))
    assert m["reward_margin"] == pytest.approx(0.0, abs=1e-4) and m["reward_beta"] == 0.5


@pytest.mark.parametrize("side,expect", [("chosen", {"answer_accuracy": 1.0, "exact_match": 1.0, "f1": 1.0,
                                                     "quote_precision": 1.0, "distractor_rate": 0.0,
                                                     "wrong_from_distractor": None}),
                                         ("rejected", {"answer_accuracy": 0.0, "quote_precision": 0.0,
                                                       "distractor_rate": 1.0, "wrong_from_distractor": 1.0})])
def test_answer_metrics_on_real_triples(tiny_model, rag_data, tmp_path, monkeypatch, side, expect):
    """A generator that answers exactly like the chosen (rejected) answer scores perfectly (worst)."""
    from prefopt import evaluate

    rows = [json.loads(line) for line in (rag_data / "test.jsonl").read_text().splitlines()][:6]
    by_question = {r["meta"]["question"]: r[side][0]["content"] for r in rows}

    budgets = set()

    def fake_generate(model, tokenizer, prompts, max_new_tokens):
        budgets.add(max_new_tokens)
        return [next(a for q, a in by_question.items() if f"Question: {q}" in p) for p in prompts]

    monkeypatch.setattr(evaluate, "generate", fake_generate)
    m, records = evaluate.score_model(tiny_model, rows, evaluate.EvalConfig(data="x"))
    assert m["n_questions"] == 6 and m["quote_rate"] == 1.0
    assert budgets == {m["max_new_tokens"]} and m["max_new_tokens"] > 64  # the tiny tokenizer's answers are long
    for k, v in expect.items():
        assert m[k] == (v if v is None else pytest.approx(v)), (k, records)


def test_to_device_puts_a_cpu_model_on_this_ranks_gpu(tiny_model, monkeypatch):
    """from_pretrained loads on the CPU: eval and on-policy sampling move the model to cuda:LOCAL_RANK
    themselves (CI has no GPU, so CUDA is faked and Module.to only records where it was sent)."""
    import torch

    from prefopt.models import ModelSpec, load_model, to_device

    model, sent = load_model(ModelSpec(base=tiny_model, tokenizer=tiny_model)), []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: sent.append(a) or self)
    assert to_device(model) is model and sent == []  # no GPU: stays where it is
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert to_device(model) is model and sent == [("cuda:1",)]


def test_eval_sends_policy_and_reference_through_to_device(tiny_model, sft_run, tmp_path, monkeypatch):
    import prefopt.models
    from prefopt.evaluate import load_for_eval

    placed = []
    monkeypatch.setattr(prefopt.models, "to_device", lambda m: placed.append(m) or m)
    _, model, _, _ = load_for_eval(str(sft_run))
    assert placed == [model]
    placed.clear()
    _, model, _, ref = load_for_eval(str(fake_full_dpo_run(tiny_model, tmp_path / "full")))
    assert placed == [model, ref]
    placed.clear()
    _, model, _, ref = load_for_eval(str(fake_dpo_run(sft_run, tmp_path / "lora")))
    assert placed == [model] and ref == "adapter"
    placed.clear()  # answers only: the DPO adapter merged too, no reference
    _, model, beta, ref = load_for_eval(str(tmp_path / "lora"), scores=False)
    assert placed == [model] and beta is None and ref is None and not hasattr(model, "disable_adapter")


def test_the_default_generation_budget_fits_the_longest_chosen_answer(tiny_model):
    """Short answers get the floor of 64 tokens; a long one (PubMedQA's quote a conclusion) its length plus 8, so
    its label after <ANSWER>: is not cut off."""
    from prefopt.evaluate import answer_budget
    from prefopt.models import load_tokenizer, resolve

    tok = load_tokenizer(resolve(tiny_model))
    long = "##Reason: ##begin_quote##" + "the fall rate was higher in older adults " * 20 + "##end_quote## <ANSWER>: yes"
    rows = [{"chosen": [{"role": "assistant", "content": "<ANSWER>: granite"}]}]
    assert answer_budget(tok, rows) == 64 and answer_budget(tok, []) == 64
    n = len(tok(long, add_special_tokens=False)["input_ids"])
    assert n > 64 and answer_budget(tok, rows + [{"chosen": [{"role": "assistant", "content": long}]}]) == n + 8
