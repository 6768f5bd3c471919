"""`prefopt eval --retrieve K --corpus CORPUS`: the held-out questions answered as RAG is deployed, from the
retriever's top K documents of a corpus, with no oracle forced into the prompt.

Each row's question (``meta.question``) is ranked against CORPUS, read as `prefopt collect rag` reads it
(`quickstart`: the bundled corpus), by ``--retriever``: dense (all-MiniLM-L6-v2), bm25, or the directory of a
sentence-transformers model (a fine-tuned retriever). The top K documents, best first, fill collect's prompt
(:func:`prefopt.collect.rows.rag_prompt`, the same templates), and each model answers it greedily. Beside the
oracle-shown metrics, per model:

- ``recall_at_k``: share of the questions whose top K holds the oracle (``meta.oracle_id``); the same for
  every model. Chunk ids follow collect (``d#c{n}`` is chunk n of document d): a retrieved document holds its
  chunks, and a retrieved chunk stands for its document when the oracle is the whole document.
- ``retrieved_answer_accuracy``: answer accuracy (as ``answer_accuracy``) with the retrieved documents;
  ``retrieved_accuracy_oracle_in`` / ``retrieved_accuracy_oracle_out``: the same over the questions whose
  oracle was / was not retrieved (``None`` when there are none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefopt.errors import PrefoptError

RETRIEVERS = ("dense", "bm25")
LEGEND = ("With --retrieve K: recall@k: share of questions whose top K documents hold the oracle; ret_answer_acc: "
          "answer_acc with the top K documents as the prompt; ret_acc_in / ret_acc_out: the same where the oracle "
          "was / was not retrieved.")


def check_settings(retrieve: int | None, corpus: str, retriever: str) -> None:
    """One-line errors for the --retrieve settings of `prefopt eval`."""
    if retrieve is None:
        if corpus:
            raise PrefoptError("--corpus goes with --retrieve K (answer from the top K documents of the corpus)")
        return
    if retrieve < 1:
        raise PrefoptError(f"--retrieve must be >= 1 (documents per prompt), got {retrieve}")
    if not corpus:
        raise PrefoptError("--retrieve needs --corpus: the corpus to retrieve from (as `prefopt collect rag` reads "
                           "it; `quickstart`: the bundled one)")
    if retriever not in RETRIEVERS and not Path(retriever).is_dir():
        raise PrefoptError(f"--retriever: {retriever!r} is not dense, bm25 or the directory of a "
                           "sentence-transformers model")


def covers(retrieved_id: str, oracle_id: str) -> bool:
    """A retrieved document or chunk shows the oracle: the same id, the document the oracle chunk was cut from,
    or a chunk of the oracle document."""
    from prefopt.collect.corpus import chunk_parent

    return retrieved_id == oracle_id or chunk_parent(oracle_id) == retrieved_id or \
        chunk_parent(retrieved_id) == oracle_id


@dataclass
class Question:
    row: dict  # the held-out row with the retrieved prompt and documents in place (what AnswerScores reads)
    doc_ids: list[str]  # the top K, best first
    oracle_in: bool


@dataclass
class Retrieval:
    """The retrieved prompts of the held-out questions, built once and answered by every model."""

    k: int
    retriever: str
    corpus: str
    documents: int
    questions: list[Question]

    @property
    def recall(self) -> float | None:
        return sum(q.oracle_in for q in self.questions) / len(self.questions) if self.questions else None

    def summary(self) -> dict:
        return {"k": self.k, "retriever": self.retriever, "corpus": self.corpus, "documents": self.documents,
                "recall_at_k": self.recall, "n_oracle_retrieved": sum(q.oracle_in for q in self.questions),
                "n_questions": len(self.questions)}


def _where(data: str, n: int, row: dict) -> str:
    return f"{data}: row {n}" + (f" (id {row['id']})" if row.get("id") else "")


def retrieve(rows: list[dict], cfg) -> Retrieval:
    """Every row's question with the top `cfg.retrieve` documents of `cfg.corpus` by `cfg.retriever`, rendered as
    collect renders its prompts (`cfg`: an EvalConfig). Rows without question, gold answer or oracle id, or whose
    oracle is not in the corpus, are one-line errors naming the row."""
    from prefopt.collect.corpus import chunk_parent
    from prefopt.collect.rag import read_documents
    from prefopt.collect.retrieval import rank
    from prefopt.collect.rows import rag_prompt
    from prefopt.templates import Templates

    for n, row in enumerate(rows, 1):
        meta = row.get("meta") or {}
        missing = [f"meta.{k}" for k in ("question", "answer", "oracle_id") if not meta.get(k)]
        if missing:
            raise PrefoptError(f"{_where(cfg.data, n, row)} has no {' or '.join(missing)}; --retrieve needs each "
                               "row's question, gold answer and oracle id (test.jsonl of `prefopt collect rag`)")
    path, docs = read_documents(cfg.corpus, cfg.strict)
    ids = {d["id"] for d in docs}
    parents = {p for p in map(chunk_parent, ids) if p is not None}
    for n, row in enumerate(rows, 1):  # the oracle, its chunks, or the document of the oracle chunk
        oracle = str(row["meta"]["oracle_id"])
        if oracle not in ids and oracle not in parents and chunk_parent(oracle) not in ids:
            raise PrefoptError(f"{_where(cfg.data, n, row)}: oracle id {oracle!r} is not in the corpus {path} "
                               "(was it collected from another corpus?)")
    kind, model = ("dense", cfg.retriever) if cfg.retriever not in RETRIEVERS else (cfg.retriever, None)
    ranked = rank(kind, docs, [r["meta"]["question"] for r in rows], cfg.retrieve, dense_model=model)
    tpl, questions = Templates(cfg.template_dir), []
    for row, idx in zip(rows, ranked):
        meta, top = row["meta"], [docs[i] for i in idx]
        top_ids = [d["id"] for d in top]
        oracle_in = any(covers(i, str(meta["oracle_id"])) for i in top_ids)
        shown = {**row, "prompt": rag_prompt(tpl, meta["question"], top),
                 "meta": {**meta, "doc_ids": top_ids, "oracle_in_context": oracle_in}}
        questions.append(Question(shown, top_ids, oracle_in))
    return Retrieval(cfg.retrieve, cfg.retriever, path, len(docs), questions)


def score(name: str, tokenizer, retrieval: Retrieval, answer, batch_size: int, progress=None) -> tuple[dict, list]:
    """(metrics, per-answer records) of one model on the retrieved prompts; `answer(prompts)` gives its greedy
    answers to chat-rendered prompts, `progress(n)` is called after each batch of n questions."""
    from prefopt.metrics import AnswerScores
    from prefopt.scoring import chat_prompt

    every, split, records = AnswerScores(), {True: AnswerScores(), False: AnswerScores()}, []
    for start in range(0, len(retrieval.questions), batch_size):
        batch = retrieval.questions[start: start + batch_size]
        outs = answer([chat_prompt(tokenizer, q.row["prompt"]) for q in batch])
        for q, text in zip(batch, outs):
            rec = every.add(q.row, text)
            split[q.oracle_in].add(q.row, text)
            records.append({"model": name, "mode": "retrieved", "k": retrieval.k, "doc_ids": q.doc_ids,
                            "oracle_retrieved": q.oracle_in, **rec})
        if progress:
            progress(len(batch))
    metrics = {"recall_at_k": retrieval.recall, "retrieved_answer_accuracy": every.metrics()["answer_accuracy"],
               "retrieved_accuracy_oracle_in": split[True].metrics()["answer_accuracy"],
               "retrieved_accuracy_oracle_out": split[False].metrics()["answer_accuracy"],
               "retrieve_k": retrieval.k, "n_retrieved_questions": every.answers,
               "n_oracle_retrieved": split[True].answers}
    return metrics, records
