"""What eval and DPO compute with a model: the chat-rendered texts of a triple, the log-probabilities of
completions, the generation budget, greedy answers and batched sampling."""

from __future__ import annotations

import inspect

from prefopt.errors import PrefoptError


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt messages as the chat template renders them, ending where the assistant's answer starts."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def pair_texts(tokenizer, row: dict) -> tuple[str, str, str]:
    """(prompt, chosen completion, rejected completion) as the chat template renders them."""
    prompt = chat_prompt(tokenizer, row["prompt"])
    out = [prompt]
    for side in ("chosen", "rejected"):
        full = tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=False)
        if not full.startswith(prompt):
            raise PrefoptError("the chat template does not render the prompt as a prefix of prompt + answer")
        out.append(full[len(prompt):])
    return tuple(out)


def _batch(tokenizer, prompts: list[str], completions: list[str]):
    """(input_ids, attention_mask, labels) of prompt + completion rows, right-padded; labels are the completion
    tokens and -100 elsewhere (TRL's DPO layout)."""
    import torch

    seqs, starts = [], []
    for p, c in zip(prompts, completions):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        seqs.append(p_ids + tokenizer(c, add_special_tokens=False)["input_ids"])
        starts.append(len(p_ids))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (s, start) in enumerate(zip(seqs, starts)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, start: len(s)] = ids[i, start: len(s)]
    return ids, mask, labels


def _token_logps(model, ids, labels, **kwargs):
    """Per position, the log-probability of the label of the next position (`shift`ed) or of this one."""
    import torch

    logits = model(input_ids=ids.to(model.device), **kwargs).logits.float()
    return torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None].to(model.device)).squeeze(-1)


def completion_logps(model, tokenizer, prompts: list[str], completions: list[str]) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each completion given its prompt (one right-padded batch)."""
    return _row_logps(model, *_batch(tokenizer, prompts, completions))


def _row_logps(model, ids, mask, labels) -> list[tuple[float, int]]:
    """completion_logps of a batch from `_batch`, one row per completion."""
    logps = _token_logps(model, ids[:, :-1], labels[:, 1:], attention_mask=mask[:, :-1].to(model.device))
    scored = (labels[:, 1:] != -100).to(logps.device)
    return [(logps[i][scored[i]].sum().item(), int(scored[i].sum())) for i in range(len(ids))]


def pair_logps(model, tokenizer, texts: list[tuple[str, str, str]], share_prefix: bool = True) -> tuple[list, list]:
    """completion_logps of the chosen and of the rejected answer of each (prompt, chosen, rejected), in one batch:
    (the chosen ones, the rejected ones). With `share_prefix` each pair runs as one packed row, its prompt once
    (prefopt/prefix.py), where the attention implementation takes a 4D mask; the numbers are those of two rows."""
    from prefopt.prefix import mask_for, pack_pairs, packable

    prompts, completions = [t[0] for t in texts] * 2, [t[1] for t in texts] + [t[2] for t in texts]
    ids, mask, labels = _batch(tokenizer, prompts, completions)
    impl = packable(model)
    packed = pack_pairs(ids, mask, labels) if share_prefix and impl else None
    if packed is None:
        lps = _row_logps(model, ids, mask, labels)
        return lps[: len(texts)], lps[len(texts):]
    ids, sees, positions, shift_labels, index = packed
    sees = mask_for(sees, impl, model.dtype).to(model.device)
    logps = _token_logps(model, ids, shift_labels, attention_mask=sees,
                         position_ids=positions.to(model.device)).reshape(-1)
    lps = [(logps[row[row >= 0].to(logps.device)].sum().item(), int((row >= 0).sum())) for row in index]
    return lps[: len(texts)], lps[len(texts):]


def mean_logps(model, tokenizer, prompts: list[str], completions: list[str]) -> list[float]:
    """Mean per-token log-probability of each completion given its prompt (one right-padded batch)."""
    return [total / max(n, 1) for total, n in completion_logps(model, tokenizer, prompts, completions)]


def answer_budget(tokenizer, rows: list[dict], floor: int = 64) -> int:
    """Tokens to generate per answer: the longest chosen answer of `rows` plus 8, at least `floor` (PubMedQA's
    chosen answers quote a conclusion and run to 186 tokens, past which a budget of 64 cuts off the label)."""
    longest = max((len(tokenizer(r["chosen"][-1]["content"], add_special_tokens=False)["input_ids"])
                   for r in rows if r.get("chosen")), default=0)
    return max(floor, longest + 8)


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to `prompts` (chat-rendered strings), one left-padded batch."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def sample(model, enc, n: int, max_new_tokens: int, pad_token_id: int, **generate_kwargs):
    """`n` samples per prompt of the left-padded batch `enc` at temperature 1, as ``generate(num_return_sequences=n)``
    draws them, but with each prompt's forward pass run once and its KV cache shared by its `n` samples: generate
    would run it `n` times, and on long RAG prompts that is most of the sampling time."""
    from transformers import DynamicCache

    ids, mask = enc["input_ids"], enc["attention_mask"]
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate computes them
    cache = DynamicCache(config=model.config)
    last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
          past_key_values=cache, use_cache=True, **last)  # all but the last token, which generate feeds
    cache.batch_repeat_interleave(n)
    return model.generate(input_ids=ids.repeat_interleave(n, dim=0), attention_mask=mask.repeat_interleave(n, dim=0),
                          past_key_values=cache, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                          max_new_tokens=max_new_tokens, pad_token_id=pad_token_id, **generate_kwargs)
