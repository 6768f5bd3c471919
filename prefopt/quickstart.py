"""`prefopt quickstart`: the whole pipeline on the bundled invented-facts corpus, offline, on CPU.

collect rag (dense hard negatives, extractive answers) -> sft -> dpo --loss ipo -> eval of base, SFT and
DPO on held-out documents. Writes DIR/quickstart.json with `base`, `sft`, `dpo` and `seconds`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from prefopt.config import opt
from prefopt.resources import QUICKSTART


@dataclass
class QuickstartConfig:
    """Run collect -> sft -> dpo (IPO) -> eval on the bundled corpus and print the comparison."""

    output_dir: str = opt("quickstart-out", "Where data/, sft/, dpo/, eval/ and quickstart.json go.")
    model: str = opt("smollm2-135m", "Base model: smollm2-135m (bundled, offline), a Hub id or a local path.")
    distractors: int = opt(3, "Distractor documents per prompt.")
    sft_epochs: float = opt(1.0, "SFT passes over the train triples (at prefopt sft's default lr).")
    dpo_steps: int = opt(16, "DPO optimizer steps (4 pairs each: 2 per micro-batch, which is faster on CPU).")
    beta: float = opt(0.5, "IPO β (TRL's IPO averages log-probs per token: target margin 1/(2β) per token).")
    seed: int = opt(42, "Seed for data and training.")


def _stage(title: str) -> None:
    from rich.console import Console

    Console(stderr=True).rule(f"[bold]prefopt quickstart: {title}")


def run(cfg: QuickstartConfig) -> dict:
    from prefopt import dpo, evaluate, sft
    from prefopt.collect import rag

    start = time.time()
    out = Path(cfg.output_dir)
    data = out / "data"
    _stage("collect RAG triples")
    rag.run(rag.RagConfig(corpus=str(QUICKSTART / "corpus.jsonl"), questions=str(QUICKSTART / "questions.jsonl"),
                          output_dir=str(data), distractors=cfg.distractors, p=1.0, seed=cfg.seed,
                          dpo_share=0.0))  # SFT and DPO on the same 90-odd triples: the run docs/quickstart.md shows
    _stage("SFT")
    sft.run(sft.SFTConfig(model=cfg.model, data=str(data / "train.jsonl"), output_dir=str(out / "sft"),
                          epochs=cfg.sft_epochs, seed=cfg.seed))
    _stage("DPO (IPO)")
    dpo.run(dpo.DPOConfig(model=str(out / "sft"), data=str(data / "train.jsonl"), output_dir=str(out / "dpo"),
                          loss="ipo", beta=cfg.beta, max_steps=cfg.dpo_steps, seed=cfg.seed, epochs=1,
                          ref="implicit", batch_size=2, gradient_accumulation_steps=2,  # 16 steps: no precompute
                          on_policy=0, hard_margin=0))  # the collected rejected answers, each once: fast on a CPU
    _stage("eval on held-out documents")
    models = {"base": cfg.model, "sft": str(out / "sft"), "dpo": str(out / "dpo")}
    results = evaluate.evaluate(evaluate.EvalConfig(models=list(models.values()), data=str(data / "test.jsonl"),
                                                    output_dir=str(out / "eval")))
    summary = {key: results[name] for key, name in models.items()}
    summary["seconds"] = round(time.time() - start, 1)
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    evaluate.print_table({key: summary[key] for key in models})
    print(f"prefopt quickstart: done in {summary['seconds']:.0f} s; results in {out / 'quickstart.json'}")
    return summary
