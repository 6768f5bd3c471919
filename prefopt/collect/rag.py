"""`prefopt collect rag`: RAFT-style RAG preference triples from a corpus and questions.

Each prompt shows the question with its oracle document among K distractors (hard negatives by default);
the chosen answer quotes the oracle, the rejected answer quotes a distractor and answers from it. Documents
are split into train and test by group (or id), so no document is on both sides; test prompts always show
the oracle, train prompts show it with probability p.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from prefopt.collect import extractive
from prefopt.collect.retrieval import RETRIEVERS, rank
from prefopt.config import choice, opt
from prefopt.data import read_jsonl, write_rows
from prefopt.errors import PrefoptError
from prefopt.templates import Templates

NO_ORACLE = ("abstain", "answer", "skip")


@dataclass
class RagConfig:
    """Build RAG preference triples: oracle + distractors in the prompt, chosen quotes the oracle, rejected a distractor."""

    corpus: str = opt("", "Corpus JSONL: one document per line with `id`, `text` and optional `title`, `group`.")
    questions: str = opt("", "Questions JSONL: `question`, `answer` (gold) and `doc_id` (the oracle's id).")
    out: str = opt("data/rag", "Output dir: train.jsonl, test.jsonl, rejects.jsonl, card.json.")
    retriever: str = opt("bm25", "Distractor mining: bm25 (hard negatives) or random (as RAFT).")
    distractors: int = opt(4, "Distractor documents per prompt (K).")
    p: float = opt(0.8, "Probability that a train prompt shows the oracle (test prompts always do).")
    no_oracle: str = opt("abstain", "Chosen answer when the oracle is left out: abstain, answer (from memory), skip.")
    generator: str = opt("extractive", "Answer generator: extractive (no LLM; needs gold answers).")
    test_size: float = opt(0.2, "Share of document groups held out for test.jsonl.")
    seed: int = opt(0, "Seed for the split, the oracle draw and the document order.")
    template_dir: Optional[str] = opt(None, "Directory overriding the templates of data_templates/.")

    def __post_init__(self) -> None:
        if not self.corpus or not self.questions:
            raise PrefoptError("--corpus and --questions are required")
        choice(self.retriever, "retriever", RETRIEVERS)
        choice(self.no_oracle, "no_oracle", NO_ORACLE)
        choice(self.generator, "generator", ("extractive",))
        if self.distractors < 1:
            raise PrefoptError("--distractors must be >= 1")
        if not 0.0 <= self.p <= 1.0 or not 0.0 <= self.test_size < 1.0:
            raise PrefoptError("--p must be in [0, 1] and --test-size in [0, 1)")


def _load(path: str, required: tuple[str, ...]) -> list[dict]:
    rows = list(read_jsonl(path))
    if not rows:
        raise PrefoptError(f"{path}: empty file")
    for i, row in enumerate(rows, 1):
        missing = [k for k in required if not str(row.get(k, "")).strip()]
        if missing:
            raise PrefoptError(f"{path}: row {i}: missing {', '.join(missing)} (expected {', '.join(required)})")
    return rows


def split_groups(docs: list[dict], test_size: float, seed: int) -> set[str]:
    """The ids of the test documents: whole groups, about `test_size` of them."""
    groups = sorted({d.get("group", d["id"]) for d in docs})
    random.Random(seed).shuffle(groups)
    n_test = round(len(groups) * test_size) if test_size else 0
    test = set(groups[:n_test])
    return {d["id"] for d in docs if d.get("group", d["id"]) in test}


def build_row(q: dict, oracle: dict, ranked: list[dict], cfg: RagConfig, tpl: Templates, test: bool):
    """One triple, or (None, reason)."""
    rng = random.Random(f"{cfg.seed}:{oracle['id']}:{q['question']}")
    gold = q["answer"]
    seen = {extractive.normalize(oracle["text"])}
    pool = []  # hard negatives: not the oracle, no gold answer inside, no duplicates
    for d in ranked:
        key = extractive.normalize(d["text"])
        if d["id"] != oracle["id"] and key not in seen and not extractive.contains(d["text"], gold):
            seen.add(key)
            pool.append(d)
    with_oracle = test or rng.random() < cfg.p
    if not with_oracle and cfg.no_oracle == "skip":
        return None, "oracle left out (--no-oracle skip)"
    shown = pool[: cfg.distractors if with_oracle else cfg.distractors + 1]
    if len(shown) < cfg.distractors:
        return None, "too few distinct distractors"
    oracle_sentence = extractive.best_sentence(oracle["text"], q["question"], gold=gold)
    if oracle_sentence is None:
        return None, "gold answer not found in the oracle"
    rejected = None
    for d in shown:  # the best-ranked distractor that yields a confident wrong answer
        sentence = extractive.best_sentence(d["text"], q["question"], avoid=gold)
        answer = sentence and extractive.aligned_answer(oracle_sentence, gold, sentence)
        if answer and extractive.normalize(answer) != extractive.normalize(gold) and sentence not in oracle["text"]:
            rejected = (d, sentence, answer)
            break
    if rejected is None:
        return None, "no distractor yields a rejected answer"
    if with_oracle:
        chosen = tpl.render("answer.j2", quote=oracle_sentence, answer=gold)
    else:
        chosen = tpl.render("abstain.j2" if cfg.no_oracle == "abstain" else "memory.j2", question=q["question"], answer=gold)
    docs = shown + ([oracle] if with_oracle else [])
    rng.shuffle(docs)
    source, r_sentence, r_answer = rejected
    row = {
        "id": hashlib.sha1(f"{oracle['id']}\n{q['question']}".encode()).hexdigest()[:16],
        "prompt": [{"role": "system", "content": tpl.render("system.j2")},
                   {"role": "user", "content": tpl.render("rag_prompt.j2", question=q["question"], docs=docs)}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": tpl.render("answer.j2", quote=r_sentence, answer=r_answer)}],
        "meta": {"source": "rag", "question": q["question"], "answer": gold, "oracle_id": oracle["id"],
                 "doc_ids": [d["id"] for d in docs], "oracle_in_context": with_oracle,
                 "rejected_source_id": source["id"], "fact_type": q.get("fact_type")},
    }
    return row, None


def run(cfg: RagConfig) -> dict:
    docs = _load(cfg.corpus, ("id", "text"))
    questions = _load(cfg.questions, ("question", "answer", "doc_id"))
    by_id = {d["id"]: d for d in docs}
    if len(by_id) != len(docs):
        raise PrefoptError(f"{cfg.corpus}: document ids are not unique")
    tpl = Templates(cfg.template_dir)
    test_ids = split_groups(docs, cfg.test_size, cfg.seed)
    out = {"train": [], "test": [], "rejects": []}
    reasons: Counter = Counter()
    for split in ("train", "test"):
        split_docs = [d for d in docs if (d["id"] in test_ids) == (split == "test")]
        split_qs = [q for q in questions if q["doc_id"] in by_id and (q["doc_id"] in test_ids) == (split == "test")]
        if not split_qs:
            continue
        ranked = rank(cfg.retriever, split_docs, [q["question"] for q in split_qs], 3 * cfg.distractors + 4, cfg.seed)
        for q, idx in zip(split_qs, ranked):
            row, reason = build_row(q, by_id[q["doc_id"]], [split_docs[i] for i in idx], cfg, tpl, split == "test")
            if row is None:
                reasons[reason] += 1
                out["rejects"].append({"question": q, "reason": reason})
            else:
                out[split].append(row)
    for q in questions:
        if q["doc_id"] not in by_id:
            reasons["doc_id not in corpus"] += 1
            out["rejects"].append({"question": q, "reason": "doc_id not in corpus"})
    for name, rows in out.items():
        write_rows(Path(cfg.out) / f"{name}.jsonl", rows)
    train = out["train"]
    card = {
        "questions_in": len(questions), "kept": {"train": len(train), "test": len(out["test"])},
        "rejected": sum(reasons.values()), "rejected_by_reason": dict(reasons),
        "oracle_rate_train": round(sum(r["meta"]["oracle_in_context"] for r in train) / max(len(train), 1), 4),
        "p": cfg.p, "distractors": cfg.distractors, "retriever": cfg.retriever, "generator": cfg.generator,
        "documents": {"train": len(docs) - len(test_ids), "test": len(test_ids)},
    }
    (Path(cfg.out) / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(f"prefopt collect rag: {card['questions_in']} questions -> {len(train)} train, {len(out['test'])} test, "
          f"{card['rejected']} rejected; written to {cfg.out}")
    return card
