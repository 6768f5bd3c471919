"""The retriever side of `prefopt retriever` (sentence-transformers, imported only when the command runs): the
listwise KL loss, the training run, and the retriever's scores of each question's candidates."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss
from sentence_transformers.util import pairwise_cos_sim



class LSRLoss(DistillKLDivLoss):
    """KL(target || softmax(cos(q, c) / T)) over each question's candidates, averaged over the questions, with the
    target softmax(labels / τ) and the labels the LM's log-probs: sentence-transformers' DistillKLDivLoss without
    its T² factor (made for distillation temperatures of 1 and above; at T = 0.05 it would log the KL 400 times
    smaller). Columns: the question, then its candidates; the label: one log-prob per candidate."""

    def __init__(self, model: SentenceTransformer, tau: float, temperature: float):
        super().__init__(model, similarity_fct=pairwise_cos_sim, student_temperature=temperature,
                         teacher_temperature=tau)

    def compute_loss_from_embeddings(self, embeddings, labels):
        return super().compute_loss_from_embeddings(embeddings, labels.float()) / self.student_temperature ** 2


def load(path: str) -> SentenceTransformer:
    """A fresh copy of the model (not the one retrieval.rank caches), on the GPU when there is one."""
    return SentenceTransformer(path, device="cuda" if torch.cuda.is_available() else "cpu")


def scores(model: SentenceTransformer, queries: list[str], candidates: list[list[str]]) -> list[list[float]]:
    """cos(query, candidate) of each question's candidates."""
    enc = lambda texts: model.encode(texts, batch_size=64, convert_to_tensor=True,  # noqa: E731
                                     normalize_embeddings=True, show_progress_bar=False)
    q, d = enc(queries), enc([t for c in candidates for t in c])
    out, at = [], 0
    for i, cands in enumerate(candidates):
        out.append((d[at: at + len(cands)] @ q[i]).tolist())
        at += len(cands)
    return out


def train(base: str, examples: list[tuple[str, list[str], list[float]]], cfg, run_dir: str | Path, agreement):
    """(model, stats): `base` fine-tuned on (question, candidate texts, LM log-probs) examples with LSRLoss by
    sentence-transformers' trainer (`cfg`: a RetrieverConfig); each log goes to run_dir/metrics.jsonl. The stats:
    steps, the mean training loss, seconds, and `agreement(cosines, logps)` (a dict) before and after."""
    from datasets import Dataset
    from transformers import set_seed

    from prefopt.train import metrics_callback

    set_seed(cfg.seed)
    model = load(base)
    queries, cands, logps = ([e[i] for e in examples] for i in range(3))
    before = agreement(scores(model, queries, cands), logps)
    columns = {"query": queries, **{f"candidate_{j}": [c[j] for c in cands] for j in range(len(cands[0]))},
               "label": logps}
    work = Path(run_dir) / ".tmp-train"
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, lr_scheduler_type="linear", warmup_steps=0.1, logging_steps=1,
        save_strategy="no", report_to="none", seed=cfg.seed, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(), logging_nan_inf_filter=False)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(columns),
                                         loss=LSRLoss(model, cfg.tau, cfg.temperature),
                                         callbacks=[metrics_callback(str(run_dir))])
    start = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - start
    shutil.rmtree(work, ignore_errors=True)
    after = agreement(scores(model, queries, cands), logps)
    return model, {"steps": result.global_step, "train_loss": result.training_loss, "seconds": round(seconds, 3),
                   **{f"{k}_before": v for k, v in before.items()}, **{f"{k}_after": v for k, v in after.items()}}
