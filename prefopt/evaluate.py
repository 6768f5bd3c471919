"""`prefopt eval`: compare models (base, SFT run, DPO run, ...) side by side on held-out triples.

Per model (docs/evaluation.md has the details):

- ``pref_accuracy``: share of pairs where the model gives the chosen answer a higher mean per-token
  log-probability than the rejected one (no reference needed, so comparable across models).
- ``reward_accuracy``, ``reward_margin`` (DPO run dirs only): DPO's implicit reward β·(log π − log π_ref),
  log-probs summed over the completion, against the reference = the same model with the DPO adapter disabled
  (base + the parent SFT adapter; for a full-weights DPO run, the model it started from), β from its config.yaml.
- From greedy generation on the questions shown with their oracle (metrics in :mod:`prefopt.metrics`):
  ``answer_accuracy`` (the final answer, the text after ``<ANSWER>:``, contains the gold answer),
  ``exact_match`` and ``f1`` (SQuAD normalization), ``quote_precision`` (quotes found verbatim in the oracle),
  ``quote_rate``, ``distractor_rate`` (answers quoting a distractor), ``wrong_from_distractor`` (wrong final
  answers that a distractor holds and the oracle does not: a look-alike's value under the asked name, which quotes
  no distractor verbatim) and ``yesno_accuracy`` (yes/no/maybe data).
- With ``--retrieve K --corpus CORPUS`` (:mod:`prefopt.retrieval_eval`): the questions answered again from the
  retriever's top K documents, as RAG is deployed: ``recall_at_k`` and ``retrieved_answer_accuracy``, split by
  oracle retrieved or not.

Writes eval.json, eval.md (the side-by-side table), eval.png (bar chart) and generations.jsonl.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from prefopt import retrieval_eval
from prefopt.config import choice, opt, read_config, shared
from prefopt.errors import PrefoptError
from prefopt.scoring import answer_budget, generate, pair_logps, pair_texts

# (key, short header) in table order; the first four are always shown, the others when a model has them
COLUMNS = [("pref_accuracy", "pref_acc"), ("answer_accuracy", "answer_acc"), ("n_pairs", "n_pairs"),
           ("n_questions", "n_questions"), ("reward_accuracy", "reward_acc"), ("reward_margin", "reward_margin"),
           ("exact_match", "EM"), ("f1", "F1"), ("quote_precision", "quote_prec"), ("quote_rate", "quote_rate"),
           ("distractor_rate", "distractor_rate"), ("wrong_from_distractor", "wrong_from_distr"),
           ("yesno_accuracy", "yes/no/maybe_acc"), ("recall_at_k", "recall@k"),
           ("retrieved_answer_accuracy", "ret_answer_acc"), ("retrieved_accuracy_oracle_in", "ret_acc_in"),
           ("retrieved_accuracy_oracle_out", "ret_acc_out")]
ALWAYS = {"pref_accuracy", "answer_accuracy", "n_pairs", "n_questions"}
HEADLINE = ["pref_accuracy", "reward_accuracy", "answer_accuracy", "exact_match", "f1", "quote_precision",
            "distractor_rate", "wrong_from_distractor", "yesno_accuracy", "retrieved_answer_accuracy"]
CHART = "eval.png"


@dataclass
class EvalConfig:
    """Score models side by side on held-out triples: preference accuracy, DPO reward accuracy, answer EM/F1,
    quote precision, distractor rate, wrong answers from a distractor, yes/no/maybe accuracy."""

    models: list[str] = opt(["smollm2-135m"], "Models to compare (repeat the flag, or list them after it): "
                                               "Hub ids, local paths, smollm2-135m, or prefopt run dirs.", greedy=True)
    data: str = opt("", "Held-out triples (test.jsonl from `prefopt collect`).")
    output_dir: str = opt("runs/eval", "Where eval.json, eval.md, eval.png and generations.jsonl go.")
    limit: int = opt(0, "Score at most this many rows (0: all).")
    max_new_tokens: int = opt(0, "Generation budget per answer (0: the longest chosen answer of the data plus 8 "
                                 "tokens, at least 64).")
    batch_size: int = opt(8, "Rows per forward / generation batch.")
    scores: bool = opt(True, "Score chosen against rejected by log-prob (pref_acc, DPO reward acc/margin); "
                             "--no-scores generates and scores the answers only, about twice as fast.")
    precision: str = shared("precision", help="The weights' dtype (bf16 on a CPU with AVX512-BF16: faster, a few "
                                              "answers differ; docs/evaluation.md).")
    strict: bool = shared("strict")
    trust_remote_code: bool = shared("trust_remote_code")
    prefix_sharing: bool = opt(True, "Score each pair as one sequence, its prompt once (the same numbers as two "
                                     "rows; false: two rows).", config_only=True)
    retrieve: Optional[int] = opt(None, "Also answer each question from the top K documents that --retriever finds "
                                        "in --corpus, no oracle forced in (RAG as deployed): recall@K and answer "
                                        "accuracy with retrieval, split by oracle retrieved or not.")
    corpus: str = opt("", "The corpus of --retrieve, as `prefopt collect rag` reads it (`quickstart`: the bundled "
                          "one).")
    retriever: str = opt("dense", "The retriever of --retrieve: dense (all-MiniLM-L6-v2), bm25, or the directory of "
                                  "a sentence-transformers model.")
    template_dir: Optional[str] = shared("template_dir", help="The prompts of --retrieve; use collect's.")

    def __post_init__(self) -> None:
        if not self.data:
            raise PrefoptError("--data is required: held-out triples from `prefopt collect`")
        choice(self.precision, "precision", ("auto", "bf16", "fp16", "fp32"))
        if not self.models:
            raise PrefoptError("--models needs at least one model")
        if self.batch_size < 1:
            raise PrefoptError("--batch-size must be >= 1")
        for name in ("limit", "max_new_tokens"):
            if getattr(self, name) < 0:
                raise PrefoptError(f"--{name.replace('_', '-')} must be >= 0")
        retrieval_eval.check_settings(self.retrieve, self.corpus, self.retriever)


def dpo_beta(spec) -> float | None:
    """β of a DPO run dir (from its config.yaml), or None when the model is not one."""
    if not spec.run or spec.run.get("stage") != "dpo":
        return None
    return float(read_config(spec.tokenizer).get("beta", 0.1))  # spec.tokenizer is the run dir itself


def eval_dtype(precision: str):
    """auto: bf16 on a GPU that has it, else fp32 (the dtype training loads its base in)."""
    import torch

    from prefopt.models import default_dtype

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(precision) or default_dtype()


def load_for_eval(name: str, trust_remote_code: bool = False, scores: bool = True, precision: str = "auto"):
    """(tokenizer, model, β, reference). For a LoRA DPO run dir the model is base + the earlier adapters of the
    chain merged, with the DPO adapter live on top (PEFT), and the reference is "adapter": the same model with
    that adapter disabled (the SFT model, as in training). For a full-weights DPO run the reference is the
    model it started from (its parent run, else its base), loaded as a second model. β and reference are None
    for any other model, and without `scores` (answers only: every adapter merged, which generates faster).
    Weights load in the dtype of `precision` (eval_dtype)."""
    from prefopt.models import ModelSpec, load_model, load_tokenizer, resolve, to_device

    trc, dtype = {"trust_remote_code": trust_remote_code}, eval_dtype(precision)
    spec = resolve(name)
    tokenizer = load_tokenizer(spec, **trc)
    beta = dpo_beta(spec) if scores else None
    if beta is None:
        return tokenizer, to_device(load_model(spec, dtype, **trc)).eval(), None, None
    if spec.run.get("weights") == "full" or not spec.adapters:
        start = spec.run.get("parent") or spec.run["base_model"]
        return (tokenizer, to_device(load_model(spec, dtype, **trc)).eval(), beta,
                to_device(load_model(resolve(start), dtype, **trc)).eval())
    from peft import PeftModel

    ref = load_model(ModelSpec(base=spec.base, tokenizer=spec.tokenizer, adapters=spec.adapters[:-1]), dtype, **trc)
    return tokenizer, to_device(PeftModel.from_pretrained(ref, spec.adapters[-1])).eval(), beta, "adapter"


def _ref_logps(model, ref, tokenizer, texts, share_prefix: bool):
    if ref == "adapter":
        with model.disable_adapter():
            return pair_logps(model, tokenizer, texts, share_prefix)
    return pair_logps(ref, tokenizer, texts, share_prefix)


def score_model(name: str, rows: list[dict], cfg: EvalConfig, progress=None,
                retrieval=None) -> tuple[dict, list[dict]]:
    """(metrics, per-answer records) of one model on `rows`, and on the retrieved prompts of `retrieval` (a
    retrieval_eval.Retrieval) when given; `progress(n)` is called after each batch of n rows."""
    import torch

    from prefopt.data import judgeable
    from prefopt.metrics import AnswerScores, reward_stats

    tokenizer, model, beta, reference = load_for_eval(name, cfg.trust_remote_code, cfg.scores, cfg.precision)
    wins, answers, records = 0, AnswerScores(), []
    budget = cfg.max_new_tokens or answer_budget(tokenizer, rows)
    sums, extra = {"pc": [], "pr": [], "rc": [], "rr": []}, {}
    with torch.no_grad():
        for start in range(0, len(rows), cfg.batch_size):
            batch = rows[start: start + cfg.batch_size]
            texts = [pair_texts(tokenizer, r) for r in batch]
            prompts = [t[0] for t in texts]
            if cfg.scores:
                chosen, rejected = pair_logps(model, tokenizer, texts, cfg.prefix_sharing)
                wins += sum(c / max(m, 1) > r / max(n, 1) for (c, m), (r, n) in zip(chosen, rejected))
            if cfg.scores and beta is not None:
                ref_chosen, ref_rejected = _ref_logps(model, reference, tokenizer, texts, cfg.prefix_sharing)
                for key, lps in (("pc", chosen), ("pr", rejected), ("rc", ref_chosen), ("rr", ref_rejected)):
                    sums[key] += [s for s, _ in lps]
            ask = [i for i, r in enumerate(batch) if judgeable(r)]
            outs = generate(model, tokenizer, [prompts[i] for i in ask], budget) if ask else []
            for i, text in zip(ask, outs):
                records.append({"model": name, "mode": "oracle", **answers.add(batch[i], text)})
            if progress:
                progress(len(batch))
        if retrieval is not None:
            extra, more = retrieval_eval.score(name, tokenizer, retrieval,
                                               lambda prompts: generate(model, tokenizer, prompts, budget),
                                               cfg.batch_size, progress)
            records += more
    metrics = {"pref_accuracy": wins / len(rows) if rows and cfg.scores else None, "n_pairs": len(rows),
               **answers.metrics(), "max_new_tokens": budget, **extra}
    if cfg.scores and beta is not None:
        metrics.update(reward_stats(sums["pc"], sums["pr"], sums["rc"], sums["rr"], beta), reward_beta=beta)
    return metrics, records


def run(cfg: EvalConfig) -> dict:
    """evaluate(), then the side-by-side table on stdout."""
    results = evaluate(cfg)
    print_table(results)
    print(f"prefopt eval: eval.json, eval.md, {CHART} and generations.jsonl in {cfg.output_dir}")
    return results


def evaluate(cfg: EvalConfig) -> dict:
    """Every model's metrics by name; eval.json, eval.md, the chart and generations.jsonl in the output dir."""
    from prefopt.data import load_rows, write_rows, write_text_atomic
    from prefopt.progress import Progress

    rows = load_rows(cfg.data, Path(cfg.output_dir) / "rejects.jsonl", cfg.strict)
    rows = rows[: cfg.limit] if cfg.limit else rows
    retrieval = retrieval_eval.retrieve(rows, cfg) if cfg.retrieve else None
    results, records = {}, []
    for name in cfg.models:
        with Progress(len(rows) * (2 if retrieval else 1), f"prefopt eval: {name}") as progress:
            results[name], recs = score_model(name, rows, cfg, progress.advance, retrieval)
        records += recs
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    chart = bar_chart(results, out / CHART)
    summary = {"data": cfg.data, "limit": cfg.limit, "max_new_tokens": cfg.max_new_tokens,
               "dtype": str(eval_dtype(cfg.precision)).removeprefix("torch."), "results": results,
               "chart": chart.name if chart else None}
    if retrieval:
        summary["retrieval"] = retrieval.summary()
    legend = LEGEND + (" " + retrieval_eval.LEGEND if retrieval else "")
    write_text_atomic(out / "eval.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / "eval.md", markdown_table(results) + "\n\n" + legend + "\n")
    write_rows(out / "generations.jsonl", records)
    return results


LEGEND = ("pref_acc: chosen has the higher mean log-prob; reward_acc / reward_margin: DPO implicit reward vs its "
          "reference (DPO runs only); answer_acc: gold contained in the final answer; EM / F1: SQuAD-normalized; "
          "quote_prec: quotes found verbatim in the oracle; distractor_rate: answers quoting a distractor; "
          "wrong_from_distr: wrong final answers a distractor holds (both: lower is better). See docs/evaluation.md.")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def columns(results: dict) -> list[tuple[str, str]]:
    """The table's columns: the basic four, plus every other metric that at least one model has."""
    return [(k, h) for k, h in COLUMNS if k in ALWAYS or any(m.get(k) is not None for m in results.values())]


def markdown_table(results: dict) -> str:
    cols = columns(results)
    lines = ["| model | " + " | ".join(h for _, h in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(_fmt(m.get(k)) for k, _ in cols) + " |" for name, m in results.items()]
    return "\n".join(lines)


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="prefopt eval")
    cols = columns(results)
    for _, h in [("model", "model"), *cols]:
        table.add_column(h)
    for name, m in results.items():
        table.add_row(name, *(_fmt(m.get(k)) for k, _ in cols))
    # rich assumes 80 columns when output goes to a file or pipe, which would cut the table's cells short
    Console(width=None if sys.stdout.isatty() else 240).print(table)


def short_names(names: list[str]) -> list[str]:
    """Chart labels: a path's last two parts (runs/sft -> runs/sft), unique."""
    out = []
    for name in names:
        parts = Path(name).parts
        label = "/".join(parts[-2:]) if len(parts) > 1 else name
        out.append(label if label not in out else f"{label} ({len(out) + 1})")
    return out


def bar_chart(results: dict, path: Path) -> Path | None:
    """A grouped bar chart of the headline metrics (models side by side) as a PNG; None when nothing to plot."""
    keys = [k for k in HEADLINE if any(m.get(k) is not None for m in results.values())]
    if not results or not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = short_names(list(results))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(keys) * max(1, len(results)) / 2), 4))
    for j, (label, m) in enumerate(zip(labels, results.values())):
        xs = [i + (j - (len(results) - 1) / 2) * width for i in range(len(keys))]
        bars = ax.bar(xs, [m.get(k) or 0.0 for k in keys], width, label=label)
        for bar, k in zip(bars, keys):
            if m.get(k) is not None:
                ax.annotate(f"{m[k]:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(keys)))
    lower = ("distractor_rate", "wrong_from_distractor")
    ax.set_xticklabels([k + (" (lower is better)" if k in lower else "") for k in keys], rotation=20, ha="right",
                       fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_title("prefopt eval")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
