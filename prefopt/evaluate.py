"""`prefopt eval`: compare models (base, SFT run, DPO run, ...) side by side on held-out triples.

- ``pref_accuracy``: share of pairs where the model gives the chosen answer a higher mean per-token
  log-probability than the rejected one (no reference needed, so comparable across models).
- ``answer_accuracy``: share of questions shown with their oracle whose generated answer (the text after
  ``<ANSWER>:`` when the model writes one, else all of it) contains the gold answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from prefopt.config import opt
from prefopt.errors import PrefoptError

ANSWER_TAG = "<ANSWER>:"


@dataclass
class EvalConfig:
    """Score models side by side on held-out triples: preference accuracy and RAG answer accuracy."""

    models: list[str] = opt(["smollm2-135m"], "Models to compare (repeat the flag, or list them after it): "
                                               "Hub ids, local paths, smollm2-135m, or prefopt run dirs.", greedy=True)
    data: str = opt("", "Held-out triples (test.jsonl from `prefopt collect`).")
    output_dir: str = opt("runs/eval", "Where eval.json, eval.md and generations.jsonl go.")
    limit: int = opt(0, "Score at most this many rows (0: all).")
    max_new_tokens: int = opt(64, "Generation budget per answer.")
    batch_size: int = opt(8, "Rows per forward / generation batch.")

    def __post_init__(self) -> None:
        if not self.data:
            raise PrefoptError("--data is required: held-out triples from `prefopt collect`")
        if not self.models:
            raise PrefoptError("--models needs at least one model")


def _texts(tokenizer, row: dict) -> tuple[str, str, str]:
    """(prompt, chosen completion, rejected completion) as the chat template renders them."""
    prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    out = [prompt]
    for side in ("chosen", "rejected"):
        full = tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=False)
        if not full.startswith(prompt):
            raise PrefoptError("the chat template does not render the prompt as a prefix of prompt + answer")
        out.append(full[len(prompt):])
    return tuple(out)


def mean_logps(model, tokenizer, prompts: list[str], completions: list[str]) -> list[float]:
    """Mean per-token log-probability of each completion given its prompt (one right-padded batch)."""
    import torch

    seqs, starts = [], []
    for p, c in zip(prompts, completions):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        seqs.append(p_ids + c_ids)
        starts.append(len(p_ids))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
    logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(model.device)).squeeze(-1)
    return [logps[i, starts[i] - 1: len(s) - 1].mean().item() for i, s in enumerate(seqs)]


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def final_answer(text: str) -> str:
    return text.split(ANSWER_TAG, 1)[1] if ANSWER_TAG in text else text


def score_model(name: str, rows: list[dict], cfg: EvalConfig, progress=None) -> tuple[dict, list[dict]]:
    import torch

    from prefopt.collect.extractive import contains
    from prefopt.models import load_model, load_tokenizer, resolve

    spec = resolve(name)
    tokenizer = load_tokenizer(spec)
    model = load_model(spec).eval()
    wins, correct, answered, records = 0, 0, 0, []
    with torch.no_grad():
        for start in range(0, len(rows), cfg.batch_size):
            batch = rows[start: start + cfg.batch_size]
            texts = [_texts(tokenizer, r) for r in batch]
            prompts = [t[0] for t in texts]
            lp = mean_logps(model, tokenizer, prompts * 2, [t[1] for t in texts] + [t[2] for t in texts])
            wins += sum(c > r for c, r in zip(lp[: len(batch)], lp[len(batch):]))
            ask = [i for i, r in enumerate(batch) if r.get("meta", {}).get("answer") and r["meta"].get("oracle_in_context", True)]
            outs = generate(model, tokenizer, [prompts[i] for i in ask], cfg.max_new_tokens) if ask else []
            for i, text in zip(ask, outs):
                ok = contains(final_answer(text), batch[i]["meta"]["answer"])
                correct += ok
                answered += 1
                records.append({"model": name, "id": batch[i].get("id"), "gold": batch[i]["meta"]["answer"],
                                "generated": text, "correct": ok})
            if progress:
                progress(len(batch))
    metrics = {"pref_accuracy": wins / len(rows), "answer_accuracy": correct / answered if answered else None,
               "n_pairs": len(rows), "n_questions": answered}
    return metrics, records


def run(cfg: EvalConfig) -> dict:
    from rich.console import Console
    from rich.progress import Progress

    from prefopt.data import load_preferences, write_rows

    rows = load_preferences(cfg.data)
    rows = rows[: cfg.limit] if cfg.limit else rows
    results, records = {}, []
    with Progress(console=Console(stderr=True)) as progress:
        for name in cfg.models:
            task = progress.add_task(f"eval {name}", total=len(rows))
            results[name], recs = score_model(name, rows, cfg, lambda n, t=task: progress.advance(t, n))
            records += recs
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({"data": cfg.data, "results": results}, indent=2) + "\n")
    (out / "eval.md").write_text(markdown_table(results) + "\n")
    write_rows(out / "generations.jsonl", records)
    print_table(results)
    return results


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown_table(results: dict) -> str:
    cols = ["pref_accuracy", "answer_accuracy", "n_pairs", "n_questions"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(_fmt(m.get(c)) for c in cols) + " |" for name, m in results.items()]
    return "\n".join(lines)


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="prefopt eval")
    cols = ["pref_accuracy", "answer_accuracy", "n_pairs", "n_questions"]
    for c in ["model", *cols]:
        table.add_column(c)
    for name, m in results.items():
        table.add_row(name, *(_fmt(m.get(c)) for c in cols))
    Console().print(table)
