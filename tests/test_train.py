"""SFT and DPO on a tiny random Llama: parameters move, step-0 losses match theory, adapters reload."""

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import invoke, settings
from prefopt.data import read_jsonl


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_sft_trains_and_records_the_run(sft_run, tiny_model):
    from safetensors.torch import load_file

    weights = load_file(sft_run / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: nonzero means it trained
    run = json.loads((sft_run / "run.json").read_text())
    assert run["stage"] == "sft" and run["base_model"] == tiny_model and run["max_length"] == 512
    assert {"torch", "transformers", "trl", "peft"} <= set(run["versions"])
    assert "loss" in _metrics(sft_run)[0]
    assert (sft_run / "config.yaml").is_file() and (sft_run / "tokenizer.json").is_file()


def _logits(model_dir_or_spec, ids):
    from prefopt.models import load_model, resolve

    model = load_model(resolve(str(model_dir_or_spec))).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("loss,beta,expected", [("sigmoid", 0.1, math.log(2)), ("ipo", 0.5, (1 / (2 * 0.5)) ** 2)])
def test_dpo_step0_loss_and_training(sft_run, rag_data, tmp_path, loss, beta, expected):
    out = tmp_path / "dpo"
    invoke("dpo", "--model", str(sft_run), "--data", str(rag_data / "train.jsonl"), "--output-dir", str(out),
            "--loss", loss, "--beta", str(beta), "--max-steps", "2", "--batch-size", "2", "--learning-rate", "1e-2")
    metrics = _metrics(out)
    # policy == reference (the SFT model) at step 0, so the loss is exactly the theoretical value
    assert metrics[0]["loss"] == pytest.approx(expected, rel=1e-4)
    # zero up to float summation: the precomputed reference ran the rows in other batches (other padding)
    assert metrics[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert {"rewards/accuracies", "rewards/chosen", "rewards/rejected", "logps/chosen"} <= set(metrics[0])
    run = json.loads((out / "run.json").read_text())
    assert run["parent"] == str(sft_run.resolve()) and run["max_length"] == 512  # inherited from SFT
    # by default the SFT model's own grounded mistakes replace the collected rejected answers (the tiny random
    # model quotes nothing, so every row keeps its collected one)
    sampled = list(read_jsonl(out / "on_policy.jsonl"))
    assert len(sampled) == 4 and {r["meta"]["rejected_source"] for r in sampled} == {"collected"}
    # the DPO run loads as base + SFT + DPO and differs from the SFT model: the new adapter trained
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    assert not torch.allclose(_logits(out, ids), _logits(sft_run, ids))


def test_default_dpo_loss_adds_the_sft_term(sft_run, rag_data, tmp_path):
    """The default loss is `sigmoid,sft` with the sft term weighted 4: at step 0 it is ln 2 plus 4 times the chosen
    answers' mean token NLL under the SFT model, which a `--loss sft --sft-weight 1` run on the same first batch logs
    alone; `--sft-weight 0` leaves ln 2."""
    losses = {}
    runs = {"default": [], "sft": ["--loss", "sft", *settings(tmp_path / "w1.yaml", sft_weight=1)],
            "off": settings(tmp_path / "w0.yaml", sft_weight=0)}
    for name, flags in runs.items():
        invoke("dpo", "--model", str(sft_run), "--data", str(rag_data / "train.jsonl"), "--output-dir",
               str(tmp_path / name), "--max-steps", "1", "--batch-size", "2", *flags)
        losses[name] = _metrics(tmp_path / name)[0]["loss"]
    assert losses["sft"] > 0.1 and losses["default"] == pytest.approx(math.log(2) + 4 * losses["sft"], rel=1e-4)
    assert losses["off"] == pytest.approx(math.log(2), rel=1e-4)


def test_saved_dpo_adapter_reloads_to_the_trained_policy(sft_run, rag_data, tmp_path):
    import trl

    from prefopt.dpo import DPOConfig
    from prefopt.models import load_model, resolve

    captured = {}
    original = trl.DPOTrainer.save_model

    def spy(self, *args, **kwargs):
        captured["model"] = self.model
        return original(self, *args, **kwargs)

    trl.DPOTrainer.save_model = spy
    try:
        from prefopt import dpo

        dpo.run(DPOConfig(model=str(sft_run), data=str(rag_data / "train.jsonl"), output_dir=str(tmp_path),
                          max_steps=2, batch_size=2, learning_rate=1e-2))
    finally:
        trl.DPOTrainer.save_model = original
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    trained = captured["model"].eval()
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        reloaded = load_model(resolve(str(tmp_path))).eval()(input_ids=ids).logits
    assert torch.allclose(expected, reloaded, atol=1e-5)


def test_push_model_card_describes_the_run(sft_run):
    import yaml as _yaml

    from prefopt.config import read_run
    from prefopt.push import model_card

    run = read_run(sft_run)
    card = model_card(run, _yaml.safe_load((sft_run / "config.yaml").read_text()), "me/tiny")
    front = _yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == run["base_model"] and front["library_name"] == "peft"
    assert {"prefopt", "trl", "sft"} <= set(front["tags"])
    assert "lora_r: 16" in card and "# me/tiny" in card


def test_on_policy_rejected_answers_are_the_models_own_wrong_samples(sft_run, rag_data, tmp_path):
    from prefopt.metrics import gold_answers
    from prefopt.onpolicy import _wrong

    assert _wrong("##Reason: ... <ANSWER>: slate", "granite") and not _wrong("<ANSWER>: Granite.", "granite")
    assert not _wrong("<ANSWER>:  ", "granite")  # an empty answer is no answer to push down
    # a labelled row (PubMedQA) is judged by its label, as eval judges it, not by the conclusion in meta.answer
    golds = gold_answers({"label": "yes", "answer": "The fall rate was higher in older adults with cancer."})
    assert not _wrong("##Reason: ... <ANSWER>: yes", golds) and _wrong("##Reason: ... <ANSWER>: no", golds)
    # --on-policy-quotes: the right answer after a quote the oracle does not hold verbatim is wrong too
    oracle = "The main hall of Ruxpeth Academy is built of granite."
    loose = oracle.replace(" is ", " ")
    right = "##Reason: ##begin_quote##{}##end_quote## <ANSWER>: granite"
    assert _wrong(right.format(loose), "granite", oracle) and not _wrong(right.format(loose), "granite")
    assert not _wrong(right.format(oracle), "granite", oracle)
    # --on-policy-grounded: an abstention is no grounded mistake; a look-alike's value in a quote is
    abstain = "##Reason: None of the documents answers this question. <ANSWER>: The documents do not say."
    assert _wrong(abstain, "granite") and not _wrong(abstain, "granite", grounded=True)
    assert _wrong(right.format(oracle).replace("granite", "slate"), "granite", grounded=True)
    out = tmp_path / "dpo"
    invoke("dpo", "--model", str(sft_run), "--data", str(rag_data / "train.jsonl"), "--output-dir", str(out),
           "--on-policy", "2", *settings(tmp_path / "s.yaml", experimental={"on_policy_grounded": False}), "--max-steps", "2", "--batch-size", "4", "--loss", "sigmoid")
    before = {r["id"]: r for r in read_jsonl(rag_data / "train.jsonl")}
    after = list(read_jsonl(out / "on_policy.jsonl"))
    assert len(after) == 8 and {r["id"] for r in after} <= set(before)  # only the rows 2 steps of 4 will use
    swapped = [r for r in after if r["meta"]["rejected_source"] == "on-policy"]
    assert swapped  # the tiny random model is wrong about everything it is asked
    for r in after:
        old = before[r["id"]]
        assert r["prompt"] == old["prompt"] and r["chosen"] == old["chosen"]
        if r in swapped:
            assert r["meta"]["oracle_in_context"] and _wrong(r["rejected"][0]["content"], r["meta"]["answer"])
        else:
            assert r["rejected"] == old["rejected"]
    assert _metrics(out)[0]["loss"] == pytest.approx(math.log(2), rel=1e-4)  # still the SFT model at step 0


def test_on_policy_rounds_sample_from_the_policy_trained_so_far(sft_run, rag_data, tmp_path, monkeypatch):
    """on_policy_rounds 2 (experimental): round 1 samples from the SFT model, round 2 from the policy its first half
    of the steps trained (the adapter on, moved), against the same reference; steps and metrics continue."""
    from prefopt import onpolicy

    real, seen = onpolicy.resample_rejected, []

    def recording(model, *args, **kwargs):
        lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
        seen.append((kwargs["name"], sum(float(p.abs().sum()) for p in lora_b), bool(lora_b)))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(onpolicy, "resample_rejected", recording)
    out = tmp_path / "dpo"
    invoke("dpo", "--model", str(sft_run), "--data", str(rag_data / "train.jsonl"), "--output-dir", str(out),
           "--on-policy", "2", "--max-steps", "4", "--batch-size", "2", "--loss", "sigmoid", "--learning-rate", "1e-2",
           *settings(tmp_path / "s.yaml", hard_margin=0, experimental={"on_policy_rounds": 2}))
    assert [(name, has) for name, _, has in seen] == [("on_policy.jsonl", False), ("on_policy_round2.jsonl", True)]
    assert seen[1][1] > 0  # round 2 samples from the trained adapter, not the SFT model
    assert (out / "on_policy_round2.jsonl").is_file() and (out / "run.json").is_file()
    steps = [m for m in _metrics(out) if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4] and [m["round"] for m in steps] == [1, 1, 2, 2]
    assert steps[0]["loss"] == pytest.approx(math.log(2), rel=1e-4)  # round 1 starts at the reference
    # round 2 starts where round 1 ended, against the same reference (the SFT model): its margins are not reset
    assert steps[2]["rewards/margins"] != pytest.approx(0.0, abs=1e-4)
    from typer.testing import CliRunner

    from prefopt.cli import app

    result = CliRunner().invoke(app, ["dpo", "--model", str(sft_run), "--output-dir", str(tmp_path / "r"), "--resume",
                                      *settings(tmp_path / "t.yaml", experimental={"on_policy_rounds": 2})])
    assert result.exit_code == 2 and "on_policy_rounds > 1 runs a LoRA adapter in one process" in result.output


def test_default_on_policy_skips_data_without_gold_answers(sft_run, rag_data, tmp_path):
    """Imported preference data has no meta.answer to judge a sample by: the default run samples nothing."""
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in read_jsonl(rag_data / "train.jsonl")]
    data = tmp_path / "imported.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "dpo"
    result = invoke("dpo", "--model", str(sft_run), "--data", str(data), "--output-dir", str(out),
                    "--max-steps", "1", "--batch-size", "2")
    assert "--on-policy is skipped" in result.output and not (out / "on_policy.jsonl").exists()
    assert _metrics(out)[0]["loss"] > math.log(2)  # sigmoid,sft: trained on the collected pairs


def test_on_policy_reversed_samples_the_rows_answered_right_again_with_their_documents_reversed(
        tiny_model, rag_data, tmp_path, monkeypatch):
    """--on-policy-reversed: a row with no wrong sample in its collected order is sampled again with its documents
    reversed, and a mistake there brings the reversed prompt with it; rows already wrong are not sampled again."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import prefopt.onpolicy as onpolicy
    from prefopt.data import judgeable
    from prefopt.raft import prompt_documents, reverse_documents, split_documents

    rows = [r for r in read_jsonl(rag_data / "train.jsonl") if judgeable(r)][:6]
    flipped = reverse_documents(rows[0])
    docs = prompt_documents(rows[0]["prompt"])
    assert len(docs) > 2 and prompt_documents(flipped["prompt"]) == docs[::-1]
    assert flipped["meta"]["doc_ids"] == rows[0]["meta"]["doc_ids"][::-1]
    assert split_documents(flipped)[0] == split_documents(rows[0])[0]  # the oracle is still found by its id
    assert reverse_documents(flipped)["prompt"] == rows[0]["prompt"]

    # the verdicts of a model that errs on row 0 as collected, and on rows 1 and 2 only with the documents reversed
    errs = {(rows[0]["id"], False), (rows[1]["id"], True), (rows[2]["id"], True)}
    sampled = []

    def first_wrong(model, tokenizer, batch, *args):
        sampled.extend((r["id"], r["meta"].get("documents_reversed", False)) for r in batch)
        return [f"wrong: {r['id']}" if (r["id"], r["meta"].get("documents_reversed", False)) in errs else None
                for r in batch]

    monkeypatch.setattr(onpolicy, "_first_wrong", first_wrong)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    out = onpolicy.resample_rejected(model, tok, rows, 2, str(tmp_path), 0, reversed_order=True)
    assert sampled == [(r["id"], False) for r in rows] + [(r["id"], True) for r in rows[1:]]
    for i, (old, new) in enumerate(zip(rows, out)):
        assert new["chosen"] == old["chosen"]
        reversed_ = i in (1, 2)
        assert new["prompt"] == (reverse_documents(old)["prompt"] if reversed_ else old["prompt"])
        assert bool(new["meta"].get("documents_reversed")) == reversed_
        assert new["meta"]["rejected_source"] == ("on-policy" if i < 3 else "collected")
        assert new["rejected"] == ([{"role": "assistant", "content": f"wrong: {old['id']}"}] if i < 3
                                   else old["rejected"])
    assert list(read_jsonl(tmp_path / "on_policy.jsonl")) == out
    sampled.clear()  # without the flag: one pass, in the collected order
    onpolicy.resample_rejected(model, tok, rows, 2, str(tmp_path), 0)
    assert sampled == [(r["id"], False) for r in rows]


def test_hard_rows_are_the_ones_the_reference_has_not_learned_and_train_k_times(sft_run, rag_data, tmp_path):
    """--hard-margin M: a row's margin is the SFT model's log p(chosen) - log p(rejected), as the row alone scores
    it; the rows below M reach the trainer K times (--hard-repeat K) after every row once, or alone with K = 0."""
    import prefopt.hardrows as hardrows
    from prefopt.data import shows_oracle
    from prefopt.errors import PrefoptError
    from prefopt.models import load_model, load_tokenizer, resolve
    from prefopt.scoring import completion_logps, pair_texts

    rows = [r for r in read_jsonl(rag_data / "train.jsonl") if shows_oracle(r)]  # dpo leaves the others out
    spec = resolve(str(sft_run))
    model, tok = load_model(spec).eval(), load_tokenizer(spec)
    with torch.no_grad():
        margins = {}
        for r in rows:
            prompt, chosen, rejected = pair_texts(tok, r)
            (c, _), (j, _) = completion_logps(model, tok, [prompt, prompt], [chosen, rejected])
            margins[r["id"]] = c - j
    ranked = sorted(margins.values())
    cut = (ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2  # half the rows below it
    hard = [r for r in rows if margins[r["id"]] < cut]
    assert 0 < len(hard) < len(rows)
    pair = lambda r: {k: r[k] for k in ("prompt", "chosen", "rejected")}  # noqa: E731
    for repeat, expected in ((2, rows + hard), (0, hard)):
        out = tmp_path / f"k{repeat}"
        result = invoke("dpo", "--model", str(sft_run), "--data", str(rag_data / "train.jsonl"), "--output-dir",
                        str(out), "--on-policy", "0", *settings(out.with_suffix(".yaml"), hard_margin=cut, hard_repeat=repeat),
                        "--epochs", "1", "--batch-size", "4")
        saved = list(read_jsonl(out / "ref_margins.jsonl"))
        assert [s["id"] for s in saved] == [r["id"] for r in rows]
        for s in saved:
            assert s["margin"] == pytest.approx(margins[s["id"]], abs=1e-3) and s["hard"] == (margins[s["id"]] < cut)
        assert f"{len(hard)} of {len(rows)} rows are hard" in result.output
        trained = [json.loads(line) for line in (out / "ref_cache" / "train.jsonl").read_text().splitlines()]
        assert trained == [pair(r) for r in expected]
        assert len(_metrics(out)) - 1 == math.ceil(len(expected) / 4)  # one epoch of them (+ the summary line)
    with pytest.MonkeyPatch.context() as mp:  # every margin at or above M: nothing to train on alone
        mp.setattr(hardrows, "ref_margins", lambda model, tokenizer, rows, **kw: [5.0, 7.0])
        assert hardrows.weigh_hard(None, None, rows[:2], 5.0, 3, str(tmp_path / "none")) == rows[:2]
        with pytest.raises(PrefoptError, match="finds no hard row \\(the smallest margin is 5.00\\)"):
            hardrows.weigh_hard(None, None, rows[:2], 5.0, 0, str(tmp_path / "none"))


def test_on_policy_samples_share_each_prompt_pass_and_draw_what_generate_draws(tiny_model):
    """sample runs each prompt once and gives its KV cache to the N samples: under the same seed it draws the
    tokens generate(num_return_sequences=N) draws, left padding included."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefopt.scoring import sample

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model, padding_side="left")
    enc = tok(["Question: where?", "Question: which of the documents names the mascot of the canal?"],
              return_tensors="pt", padding=True)
    assert not enc["attention_mask"].all()  # the short prompt is padded
    scored = {"output_scores": True, "return_dict_in_generate": True}
    with torch.no_grad():
        torch.manual_seed(0)
        want = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=3,
                              max_new_tokens=12, pad_token_id=tok.pad_token_id, **scored)
        torch.manual_seed(0)
        got = sample(model, enc, 3, 12, tok.pad_token_id, **scored)
    assert got.sequences.shape == (6, enc["input_ids"].shape[1] + 12)
    assert torch.equal(got.sequences, want.sequences)
    for step_got, step_want in zip(got.scores, want.scores, strict=True):  # the same next-token distributions
        torch.testing.assert_close(step_got, step_want)
    assert len({tuple(t) for t in got.sequences[:3].tolist()}) > 1  # samples, not one greedy answer three times


def test_the_fused_head_projects_only_completion_positions_on_a_cpu(tiny_model, monkeypatch):
    """head_on_completions_only: TRL's fused LM head scores the labelled positions alone on a CPU, with the same
    log-probs and gradients as its all-positions projection."""
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from prefopt.train import head_on_completions_only

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    add_fused_lm_head(model)
    ids = torch.randint(3, model.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(0))
    labels = ids.masked_fill(torch.arange(30) < 24, -100)  # a 24-token prompt, a 6-token completion
    projected = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *a: projected.append(len(hidden)) or apply(hidden, *a))

    def logps_and_grads():
        model.zero_grad()
        logps = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
        logps.sum().backward()
        return logps.detach(), [p.grad.clone() for p in model.parameters()]

    gate = trl_utils._use_triton  # TRL's own, or prefopt's wrapper if an earlier test built a trainer
    monkeypatch.setattr(trl_utils, "_use_triton", getattr(gate, "trl_gate", gate))  # undone after the test
    everywhere = logps_and_grads()
    head_on_completions_only()
    head_on_completions_only()  # idempotent: wraps the gate once
    compact = logps_and_grads()
    assert projected == [2 * 29, 2 * 6]  # every shifted position, then the 6 completion tokens of each row
    assert torch.equal(compact[0], everywhere[0]) and (compact[0][:, :23] == 0).all()
    for a, b in zip(compact[1], everywhere[1], strict=True):
        torch.testing.assert_close(a, b)
