"""On-policy rejected answers for `prefopt dpo --on-policy N`: the SFT model's own wrong answers.

Before training, the policy (which equals the reference at step 0) samples up to N answers per prompt at
temperature 1. The first sample whose final answer (after ``<ANSWER>:``) misses the gold answer (as eval judges
it: ``meta.label``, such as PubMedQA's yes/no/maybe, else ``meta.answer``; with the experimental
``on_policy_quotes``, also one that quotes anything not in the oracle; with ``on_policy_grounded`` (the default),
only one that quotes something, not an abstention) becomes that row's rejected answer, so DPO pushes down the
mistakes this model actually makes rather than the ones the collector imagined. With the experimental
``on_policy_reversed``, a row the model answers right in all N samples is sampled N times more with its documents
in reverse order (which flips the order of the oracle and every distractor, its look-alike among them); a wrong
answer there becomes the rejected answer and the reversed prompt the row's prompt, so DPO also sees the mistakes of
the order this model is weak in. Rows the model always answers right, and rows without a gold answer or whose oracle is not in the prompt, keep their collected rejected answer.
The rewritten rows are saved to OUTPUT_DIR/on_policy.jsonl, each with ``meta.rejected_source`` = ``on-policy``
or ``collected`` (and ``meta.documents_reversed`` on the reversed ones).
"""

from __future__ import annotations

from pathlib import Path


def _wrong(text: str, gold: str | list[str], oracle: str | None = None, grounded: bool = False) -> bool:
    """The final answer misses `gold` (every one of a list); with `oracle`, so does an answer that quotes anything
    not in it. With `grounded`, only an answer that quotes something counts (not an abstention, which quotes
    nothing)."""
    from prefopt.metrics import answer_correct, quote_counts
    from prefopt.raft import final_answer, quotes

    if grounded and not quotes(text):
        return False
    if oracle is not None:
        verbatim, quoted = quote_counts(text, oracle)
        if verbatim < quoted:
            return True
    answer = final_answer(text)
    golds = [gold] if isinstance(gold, str) else gold
    return bool(answer.strip()) and not any(answer_correct(answer, g) for g in golds)


def _first_wrong(model, tokenizer, batch: list[dict], n: int, max_new_tokens: int, quotes: bool,
                 grounded: bool) -> list[str | None]:
    """Per row of `batch`, the first of its `n` samples that `_wrong` judges wrong, or None."""
    from prefopt.metrics import gold_answers
    from prefopt.raft import split_documents
    from prefopt.scoring import chat_prompt, sample

    prompts = [chat_prompt(tokenizer, r["prompt"]) for r in batch]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    gen = sample(model, enc, n, max_new_tokens, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [next((t.strip() for t in texts[j * n:(j + 1) * n]
                  if _wrong(t, gold_answers(r["meta"]), split_documents(r)[0] if quotes else None, grounded)), None)
            for j, r in enumerate(batch)]


def resample_rejected(model, tokenizer, rows: list[dict], n: int, output_dir: str, seed: int,
                      max_new_tokens: int = 0, batch_size: int = 8, quotes: bool = False,
                      grounded: bool = False, reversed_order: bool = False,
                      name: str = "on_policy.jsonl") -> list[dict]:
    import torch

    from prefopt.data import judgeable, write_rows
    from prefopt.models import to_device
    from prefopt.progress import Progress
    from prefopt.raft import reverse_documents
    from prefopt.scoring import answer_budget

    todo = [i for i, r in enumerate(rows) if judgeable(r)]
    max_new_tokens = max_new_tokens or answer_budget(tokenizer, [rows[i] for i in todo])
    out = [{**r, "meta": {**(r.get("meta") or {}), "rejected_source": "collected"}} for r in rows]
    torch.manual_seed(seed)
    to_device(model)  # sample on this rank's GPU, where training goes
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    model.eval()
    with torch.no_grad():
        for flip in [False, True] if reversed_order else [False]:
            ids = todo
            if flip:  # the rows still without a mistake, their documents reversed
                ids = [i for i in todo if out[i]["meta"]["rejected_source"] == "collected"]
            desc = f"prefopt dpo: on-policy samples{', documents reversed' if flip else ''} ({n} per prompt)"
            with Progress(len(ids), desc) as progress:
                for start in range(0, len(ids), batch_size):
                    idx = ids[start:start + batch_size]
                    batch = [reverse_documents(rows[i]) if flip else rows[i] for i in idx]
                    wrongs = _first_wrong(model, tokenizer, batch, n, max_new_tokens, quotes, grounded)
                    for i, row, wrong in zip(idx, batch, wrongs):
                        if wrong:
                            out[i] = {**row, "rejected": [{"role": "assistant", "content": wrong}],
                                      "meta": {**row["meta"], "rejected_source": "on-policy"}}
                    progress.advance(len(idx))
    model.train()
    tokenizer.padding_side = side
    write_rows(Path(output_dir) / name, out)
    swapped = sum(r["meta"]["rejected_source"] == "on-policy" for r in out)
    flipped = sum(bool(r["meta"].get("documents_reversed")) for r in out)
    print(f"prefopt dpo: --on-policy {n}: {swapped} of {len(rows)} rejected answers are the model's own wrong "
          f"answers{f' ({flipped} with the documents reversed)' if reversed_order else ''} ({len(todo) - swapped} "
          f"always right, {len(rows) - len(todo)} without a gold answer or oracle)")
    return out
