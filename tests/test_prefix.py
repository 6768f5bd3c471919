"""Prefix-shared DPO (prefopt/prefix.py): one packed row per pair gives every answer token the log-prob of the
two-row form."""

from __future__ import annotations

import pytest
import torch

from prefopt.prefix import pack_pairs, share_prefixes


def test_pack_pairs_layout():
    # two pairs; prompt [1 2 3] / [7 8], chosen [4 5] / [9], rejected [6] / [10 11]; TRL pads on the right with 0
    ids = torch.tensor([[1, 2, 3, 4, 5], [7, 8, 9, 0, 0], [1, 2, 3, 6, 0], [7, 8, 10, 11, 0]])
    att = (torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]))
    labels = torch.tensor([[-100, -100, -100, 4, 5], [-100, -100, 9, -100, -100], [-100, -100, -100, 6, -100],
                           [-100, -100, 10, 11, -100]])
    packed, sees, positions, shift_labels, index = pack_pairs(ids, att, labels)
    assert packed.tolist() == [[1, 2, 3, 4, 5, 3, 6], [7, 8, 9, 8, 10, 11, 0]]
    assert positions.tolist() == [[0, 1, 2, 3, 4, 2, 3], [0, 1, 2, 1, 2, 3, 0]]
    assert shift_labels.tolist() == [[-100, -100, 4, 5, -100, 6, -100], [-100, 9, -100, 10, 11, -100, -100]]
    # the copy of the last prompt token (row 0, index 5) sees x0, x1 and itself; the rejected token 6 adds itself
    assert sees[0, 0, 5].tolist() == [True, True, False, False, False, True, False]
    assert sees[0, 0, 6].tolist() == [True, True, False, False, False, True, True]
    assert sees[0, 0, 4].tolist() == [True, True, True, True, True, False, False]  # chosen: prompt + chosen
    # TRL's (2B, L-1) layout: chosen of pair 0 at j = 2, 3 <- packed flat 2, 3; its rejected at j = 2 <- 5
    assert index[0].tolist() == [-1, -1, 2, 3] and index[2].tolist() == [-1, -1, 5, -1]
    assert index[1].tolist() == [-1, 8, -1, -1] and index[3].tolist() == [-1, 10, 11, -1]


def test_pairs_that_do_not_share_a_prompt_are_left_to_the_two_row_form():
    ids = torch.tensor([[1, 2, 4], [1, 3, 5]])
    labels = torch.tensor([[-100, -100, 4], [-100, -100, 5]])
    assert pack_pairs(ids, torch.ones_like(ids), labels) is None


def _batch(tokenizer, n: int = 4):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    g = torch.Generator().manual_seed(0)
    examples = []
    for i in range(n):
        words = lambda k: torch.randint(5, tokenizer.vocab_size, (k,), generator=g).tolist()  # noqa: E731
        examples.append({"prompt_ids": words(30 + 7 * i), "chosen_ids": words(3 + i), "rejected_ids": words(6 - i)})
    return DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id or 0)(examples)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_log_probs_equal_the_two_row_form(tiny_model, attn):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attn).eval()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    batch = _batch(AutoTokenizer.from_pretrained(tiny_model))
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    call = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True)
    with torch.no_grad():
        two_rows = model(**call)
        share_prefixes(model)
        packed = model(**call)
    for name in ("log_probs", "entropy", "mean_logits"):
        assert getattr(packed, name).shape == getattr(two_rows, name).shape
        assert torch.allclose(getattr(packed, name), getattr(two_rows, name), atol=1e-4), name
    assert torch.equal(packed.is_top1, two_rows.is_top1)
    assert (two_rows.log_probs != 0).sum() == (batch["completion_mask"][:, 1:] == 1).sum()  # answers scored


def _steps(run_dir) -> list[dict]:
    import json

    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("loss, extra", [("sigmoid", []), ("ipo", ["--ref", "implicit"]), ("sigmoid,sft", []),
                                         ("sigmoid", ["--full", "--ref", "copy"])],
                         ids=["sigmoid-precomputed", "ipo-implicit", "sigmoid,sft", "sigmoid-full-copy"])
def test_dpo_steps_equal_the_two_row_form(sft_run, tiny_model, rag_data, tmp_path, loss, extra):
    """The first steps' losses and gradient norms, with and without prefix sharing; step 0 as theory says."""
    import math

    from conftest import invoke, settings

    runs = {}
    for shared in (True, False):
        out = tmp_path / str(shared)
        model = tiny_model if "--full" in extra else str(sft_run)
        invoke("dpo", "--model", model, "--data", str(rag_data / "train.jsonl"), "--output-dir", str(out),
               "--max-steps", "3", "--batch-size", "2", "--loss", loss, "--beta", "0.5", "--learning-rate", "1e-2",
               "--on-policy", "0", *extra, *settings(tmp_path / f"{shared}.yaml", prefix_sharing=shared, hard_margin=0))
        runs[shared] = _steps(out)
    for a, b in zip(runs[True], runs[False], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    if loss == "sigmoid":
        assert runs[True][0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    if loss == "ipo":
        assert runs[True][0]["loss"] == pytest.approx((1 / (2 * 0.5)) ** 2, abs=1e-5)
    assert runs[True][-1]["loss"] != runs[True][0]["loss"]  # it trained


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_eval_pair_scores_packed_equal_two_rows(tiny_model, rag_data, attn):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attn).eval()
    _assert_eval_scores_equal(model, AutoTokenizer.from_pretrained(tiny_model), rag_data, 1e-3)


def _assert_eval_scores_equal(model, tokenizer, rag_data, tolerance: float) -> list[tuple[str, str, str]]:
    """eval's pair scores of 4 held-out rows, packed, equal the two-row form's; returns the rows' texts."""
    import json

    from prefopt.scoring import completion_logps, pair_logps, pair_texts

    rows = [json.loads(x) for x in (rag_data / "test.jsonl").read_text().splitlines()[:4]]
    texts = [pair_texts(tokenizer, r) for r in rows]
    with torch.no_grad():
        chosen, rejected = pair_logps(model, tokenizer, texts)
        two_rows = completion_logps(model, tokenizer, [t[0] for t in texts] * 2,
                                    [t[1] for t in texts] + [t[2] for t in texts])
    for (lp, n), (lp2, n2) in zip(chosen + rejected, two_rows, strict=True):
        assert n == n2 and n > 0 and lp == pytest.approx(lp2, abs=tolerance)
    return texts


@pytest.mark.slow  # the bundled SmolLM2-135M in fp32 on real RAG pairs: about a minute on 2 cores
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_smollm2_packed_log_probs_equal_the_two_row_form(rag_data, attn):
    """Every answer token's log-prob, and every pair's summed chosen and rejected log-probs, within 1e-4 of the
    two-row form: TRL's fused head (training) and eval's pair scoring."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    from prefopt.models import bundled_path

    path = bundled_path("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = _assert_eval_scores_equal(model, tokenizer, rag_data, 1e-4)

    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(
        [{"prompt_ids": encode(p), "chosen_ids": encode(c), "rejected_ids": encode(r)} for p, c, r in texts])
    assert batch["input_ids"].size(1) > 300  # the RAG prompts are long
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    call = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True)
    add_fused_lm_head(model, outputs=("log_probs",))
    with torch.no_grad():
        reference = model(**call).log_probs
        share_prefixes(model)
        packed = model(**call).log_probs
    assert torch.allclose(packed, reference, atol=1e-4)
    assert torch.allclose(packed.sum(1), reference.sum(1), atol=1e-4)
