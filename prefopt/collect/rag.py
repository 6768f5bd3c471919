"""`prefopt collect rag`: RAFT-style RAG preference triples from a corpus and questions.

Each prompt shows the question with its oracle document among K distractors (hard negatives by default);
the chosen answer quotes the oracle, the rejected answer quotes a distractor and answers from it. Documents
are split into train and test by group (or id), so no document is on both sides; test prompts always show
the oracle, train prompts show it with probability p. Duplicate questions are removed first, and every
row is verified (see verify.py) before it is kept; everything left out is in rejects.jsonl with a reason.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import prefopt
from prefopt.collect import extractive, quality, verify
from prefopt.collect.corpus import load_corpus
from prefopt.collect.retrieval import RETRIEVERS, rank
from prefopt.config import choice, opt
from prefopt.data import read_jsonl
from prefopt.errors import PrefoptError
from prefopt.templates import Templates

NO_ORACLE = ("abstain", "answer", "skip")
TEMPLATES = ("system.j2", "rag_prompt.j2", "answer.j2", "abstain.j2", "memory.j2")


@dataclass
class RagConfig:
    """Build RAG preference triples: oracle + distractors in the prompt, chosen quotes the oracle, rejected a distractor."""

    corpus: str = opt("", "Corpus: JSONL (`id`, `text`, optional `title`, `group`) or a folder of .txt/.md/.html/.pdf files.")
    questions: str = opt("", "Questions JSONL: `question`, `answer` (gold) and `doc_id` (the oracle's document or chunk id).")
    out: str = opt("data/rag", "Output dir: train.jsonl, test.jsonl, rejects.jsonl, card.json, card.md.")
    retriever: str = opt("bm25", "Distractor mining: bm25 (hard negatives) or random (as RAFT).")
    distractors: int = opt(4, "Distractor documents per prompt (K).")
    p: float = opt(0.8, "Probability that a train prompt shows the oracle (test prompts always do).")
    no_oracle: str = opt("abstain", "Chosen answer when the oracle is left out: abstain, answer (from memory), skip.")
    generator: str = opt("extractive", "Answer generator: extractive (no LLM; needs gold answers).")
    test_size: float = opt(0.2, "Share of document groups held out for test.jsonl.")
    seed: int = opt(0, "Seed for the split, the oracle draw and the document order.")
    template_dir: Optional[str] = opt(None, "Directory overriding the templates of data_templates/.")
    max_length: int = opt(2048, "Token budget of prompt + completion (use the same in sft/dpo); longer rows are rejected (0: no limit).")
    tokenizer: Optional[str] = opt(None, "Tokenizer (model name or path) for --max-length and --chunk-size (default: a word/punctuation proxy).")
    quote_match: str = opt("text", "Quote verification: text (verbatim up to whitespace) or words (ignores case and punctuation).")
    near_dup: float = opt(0.9, "Word 3-shingle Jaccard at which a question is a near duplicate (0: exact duplicates only).")
    chunk_size: int = opt(0, "Cut documents into chunks of this many words (tokens with --tokenizer); 0: no chunking.")
    chunk_overlap: int = opt(0, "Words (or tokens) shared by consecutive chunks.")

    def __post_init__(self) -> None:
        if not self.corpus or not self.questions:
            raise PrefoptError("--corpus and --questions are required")
        choice(self.retriever, "retriever", RETRIEVERS)
        choice(self.no_oracle, "no_oracle", NO_ORACLE)
        choice(self.generator, "generator", ("extractive",))
        choice(self.quote_match, "quote_match", verify.QUOTE_MATCH)
        if self.distractors < 1:
            raise PrefoptError("--distractors must be >= 1")
        if not 0.0 <= self.p <= 1.0 or not 0.0 <= self.test_size < 1.0:
            raise PrefoptError("--p must be in [0, 1] and --test-size in [0, 1)")
        if self.max_length < 0 or self.chunk_size < 0:
            raise PrefoptError("--max-length and --chunk-size must be >= 0")


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


def find_oracle(q: dict, by_id: dict, chunks_of: dict) -> dict | None:
    """The oracle of a question: its `doc_id`, or, when that names a chunked document, the chunk holding the
    gold answer that shares most words with the question."""
    doc_id = str(q["doc_id"])
    if doc_id in by_id:
        return by_id[doc_id]
    chunks = [c for c in chunks_of.get(doc_id, []) if extractive.contains(c["text"], q["answer"])]
    qw = set(extractive.words(q["question"]))
    return max(chunks, key=lambda c: len(qw & set(extractive.words(c["text"])))) if chunks else None


def build_row(q: dict, oracle: dict, ranked: list[dict], cfg: RagConfig, tpl: Templates, test: bool, norm=None):
    """One triple, or (None, reason). `norm` caches the normalized text of documents by id."""
    norm = norm if norm is not None else {}
    key = lambda d: norm.get(d["id"]) or norm.setdefault(d["id"], extractive.normalize(d["text"]))  # noqa: E731
    rng = random.Random(f"{cfg.seed}:{oracle['id']}:{q['question']}")
    gold = q["answer"]
    g = f" {extractive.normalize(gold)} "
    seen = {key(oracle)}
    pool = []  # hard negatives: not the oracle, no gold answer inside, no duplicates
    for d in ranked:
        k = key(d)
        if d["id"] != oracle["id"] and k not in seen and g not in f" {k} ":
            seen.add(k)
            pool.append(d)
    with_oracle = test or rng.random() < cfg.p
    if not with_oracle and cfg.no_oracle == "skip":
        return None, "oracle left out (--no-oracle skip)"
    shown = pool[: cfg.distractors if with_oracle else cfg.distractors + 1]
    if len(shown) < cfg.distractors:
        return None, "too few distinct distractors"
    oracle_quote = extractive.oracle_quote(oracle["text"], q["question"], gold)
    if oracle_quote is None:
        return None, "gold answer not found in the oracle"
    rejected = None  # a long answer's stand-in is the distractor sentence most like question + gold answer
    match = f"{q['question']} {gold}" if extractive.is_long(oracle_quote, gold) else q["question"]
    for d in shown:  # the best-ranked distractor that yields a confident wrong answer
        sentence = extractive.best_sentence(d["text"], match, avoid=gold)
        answer = sentence and extractive.wrong_answer(oracle_quote, gold, sentence)
        if answer and extractive.normalize(answer) != extractive.normalize(gold) and sentence not in oracle["text"]:
            rejected = (d, sentence, answer)
            break
    if rejected is None:
        return None, "no distractor yields a rejected answer"
    if with_oracle:
        chosen = tpl.render("answer.j2", quote=oracle_quote, answer=gold)
    else:
        chosen = tpl.render("abstain.j2" if cfg.no_oracle == "abstain" else "memory.j2", question=q["question"], answer=gold)
    docs = shown + ([oracle] if with_oracle else [])
    rng.shuffle(docs)
    source, r_sentence, r_answer = rejected
    extra = {k: v for k, v in q.items() if k not in ("question", "answer", "doc_id")}
    row = {
        "id": hashlib.sha1(f"{oracle['id']}\n{q['question']}".encode()).hexdigest()[:16],
        "prompt": [{"role": "system", "content": tpl.render("system.j2")},
                   {"role": "user", "content": tpl.render("rag_prompt.j2", question=q["question"], docs=docs)}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": tpl.render("answer.j2", quote=r_sentence, answer=r_answer)}],
        "meta": {"source": "rag", "question": q["question"], "answer": gold, "oracle_id": oracle["id"],
                 "doc_ids": [d["id"] for d in docs], "oracle_in_context": with_oracle,
                 "rejected_source_id": source["id"], "fact_type": q.get("fact_type"), **extra},
    }
    return row, None


def collect(cfg: RagConfig, docs: list[dict], questions: list[dict], counter: verify.TokenCounter, progress=None):
    """(splits, rejects, reasons): the verified rows of train and test, and every question left out."""
    by_id = {d["id"]: d for d in docs}
    if len(by_id) != len(docs):
        raise PrefoptError(f"{cfg.corpus}: document ids are not unique")
    chunks_of: dict[str, list[dict]] = {}
    for d in docs:
        if "#c" in d["id"]:
            chunks_of.setdefault(d["id"].rsplit("#c", 1)[0], []).append(d)
    tpl = Templates(cfg.template_dir)
    test_ids = split_groups(docs, cfg.test_size, cfg.seed)
    out: dict[str, list] = {"train": [], "test": []}
    rejects: list[dict] = []
    reasons: Counter = Counter()

    def reject(q, reason):
        reasons[quality.reason_key(reason)] += 1
        rejects.append({"question": q, "reason": reason})

    dedup, todo = quality.Dedup(cfg.near_dup), {"train": [], "test": []}
    for i, q in enumerate(questions):
        oracle = find_oracle(q, by_id, chunks_of)
        if oracle is None:
            reject(q, "doc_id not in corpus" if str(q["doc_id"]) not in chunks_of else "no chunk holds the gold answer")
            continue
        dup = dedup.seen(f"{q['question']} {q['answer']}", f"question {i + 1}")
        if dup:
            reject(q, dup)
            continue
        todo["test" if oracle["id"] in test_ids else "train"].append((q, oracle))
    norm: dict = {}
    for split in ("train", "test"):
        split_docs = [d for d in docs if (d["id"] in test_ids) == (split == "test")]
        if not todo[split]:
            continue
        ranked = rank(cfg.retriever, split_docs, [q["question"] for q, _ in todo[split]], 3 * cfg.distractors + 4, cfg.seed)
        for (q, oracle), idx in zip(todo[split], ranked):
            row, reason = build_row(q, oracle, [split_docs[i] for i in idx], cfg, tpl, split == "test", norm)
            if row is not None:
                meta = row["meta"]
                reason = verify.check_rag(row, oracle["text"], by_id[meta["rejected_source_id"]]["text"], q["answer"],
                                          counter, cfg.max_length, cfg.quote_match)
            if reason:
                reject(q, reason)
            else:
                out[split].append(row)
            if progress:
                progress()
    return out, rejects, reasons, test_ids, tpl


def run(cfg: RagConfig) -> dict:
    counter = verify.TokenCounter(cfg.tokenizer)
    docs = load_corpus(cfg.corpus, cfg.chunk_size, cfg.chunk_overlap, counter.tok)
    questions = _load(cfg.questions, ("question", "answer", "doc_id"))
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("collect rag", total=len(questions))
        out, rejects, reasons, test_ids, tpl = collect(cfg, docs, questions, counter, lambda: bar.advance(task))
    quality.write_split(cfg.out, {**out, "rejects": rejects})
    train = out["train"]
    card = {
        "command": "prefopt collect rag", "in": len(questions),
        "questions_in": len(questions), "kept": {"train": len(train), "test": len(out["test"])},
        "rejected": len(rejects), "rejected_by_reason": dict(reasons),
        "oracle_rate_train": round(sum(r["meta"]["oracle_in_context"] for r in train) / max(len(train), 1), 4),
        "p": cfg.p, "distractors": cfg.distractors, "retriever": cfg.retriever,
        "distractor_source": {"bm25": "BM25 hard negatives (bm25s): top-ranked non-oracle documents of the same "
                                      "split without the gold answer, deduplicated",
                              "random": "random documents of the same split (as RAFT)"}[cfg.retriever],
        "no_oracle": cfg.no_oracle, "generator": cfg.generator, "generator_version": f"prefopt {prefopt.__version__} extractive",
        "quote_match": cfg.quote_match, "max_length": cfg.max_length, "token_counter": counter.name,
        "near_dup": cfg.near_dup, "chunk_size": cfg.chunk_size, "chunk_overlap": cfg.chunk_overlap, "seed": cfg.seed,
        "documents": {"train": len(docs) - len(test_ids), "test": len(test_ids)},
        "templates": quality.template_versions(tpl, TEMPLATES),
        "lengths": {s: quality.length_stats(rows, counter) for s, rows in out.items() if rows},
    }
    assert card["in"] == len(train) + len(out["test"]) + card["rejected"]
    quality.write_card(cfg.out, card)
    print(f"prefopt collect rag: {card['questions_in']} questions -> {len(train)} train, {len(out['test'])} test, "
          f"{card['rejected']} rejected; written to {cfg.out}")
    return card
