"""The rows of `collect rag`: the random draws of one row, its prompt and provenance, and the extractive
chosen / rejected answers (rag.py builds the data set from them, generate.py the LLM rows).

`cfg` is a :class:`prefopt.collect.rag.RagConfig`.
"""

from __future__ import annotations

import hashlib
import random

from prefopt.collect import extractive
from prefopt.templates import Templates


def kinds_of(rejected: str) -> list[str]:
    """The rejected kinds of a --rejected value: one, or a comma-separated list to draw from."""
    return [k.strip() for k in rejected.split(",")]


def question_id(q: dict, key: str) -> str:
    """A question's stable id: where it comes from (`q{n}` in the file, `chunk/j` when generated) and its text."""
    return hashlib.sha1(f"{key}\n{q['doc_id']}\n{q['question']}".encode()).hexdigest()[:16]


def _hard_negatives(q: dict, oracle: dict, ranked: list[dict], key) -> list[dict]:
    """Ranked documents that are not the oracle, hold no gold answer and duplicate none before them."""
    g = extractive.normalize(q["answer"])
    g = f" {g} " if g else None
    seen, pool = {key(oracle)}, []
    for d in ranked:
        k = key(d)
        if d["id"] != oracle["id"] and k not in seen and (g is None or g not in f" {k} "):
            seen.add(k)
            pool.append(d)
    return pool


def draw(q: dict, oracle: dict, ranked: list[dict], cfg, test: bool, norm: dict):
    """(rng, with_oracle, shown distractors), or a reason: the random draws of one row, seeded by the row."""
    key = lambda d: norm.get(d["id"]) or norm.setdefault(d["id"], extractive.normalize(d["text"]))  # noqa: E731
    rng = random.Random(f"{cfg.seed}:{oracle['id']}:{q['question']}")
    pool = _hard_negatives(q, oracle, ranked, key)
    with_oracle = test or rng.random() < cfg.p
    if not with_oracle and cfg.no_oracle == "skip":
        return "oracle left out (--no-oracle skip)"
    shown = pool[: cfg.distractors if with_oracle else cfg.distractors + 1]
    if len(shown) < cfg.distractors:
        return "too few distinct distractors"
    return rng, with_oracle, shown


def no_oracle_answer(q: dict, cfg, tpl: Templates) -> str:
    return tpl.render("abstain.j2" if cfg.no_oracle == "abstain" else "memory.j2", question=q["question"],
                      answer=q["answer"])


def rag_prompt(tpl: Templates, question: str, docs: list[dict]) -> list[dict]:
    """The chat messages of a RAG prompt: system.j2, then rag_prompt.j2 with the question and `docs` in order
    (what collect shows in its rows, and `prefopt eval --retrieve` with the retrieved documents)."""
    return [{"role": "system", "content": tpl.render("system.j2")},
            {"role": "user", "content": tpl.render("rag_prompt.j2", question=question, docs=docs)}]


def make_row(q: dict, oracle: dict, docs: list[dict], with_oracle: bool, chosen: str, rejected: str,
             source: dict, tpl: Templates) -> dict:
    extra = {k: v for k, v in q.items() if k not in ("question", "answer", "doc_id") and not k.startswith("_")}
    return {
        "id": hashlib.sha1(f"{oracle['id']}\n{q['question']}".encode()).hexdigest()[:16],
        "prompt": rag_prompt(tpl, q["question"], docs),
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "meta": {"source": "rag", "question": q["question"], "answer": q["answer"], "oracle_id": oracle["id"],
                 "doc_ids": [d["id"] for d in docs], "oracle_in_context": with_oracle,
                 "rejected_source_id": source["id"], "fact_type": q.get("fact_type"), **extra},
    }


def reworded(wrong: list[tuple], gold: str, oracle: dict) -> tuple[dict, str] | None:
    """(distractor, its sentence with the oracle's name and gold answer) of the first distractor phrased unlike
    the oracle (extractive.reworded), or None."""
    for d, sentence, answer in wrong:
        fake = extractive.reworded(sentence, answer, gold, d.get("title") or "", oracle.get("title") or "")
        if fake is not None and not extractive.contains(oracle["text"], fake):
            return d, fake
    return None


def build_row(q: dict, oracle: dict, ranked: list[dict], cfg, tpl: Templates, test: bool, norm=None,
              labels: tuple = (), order: str = "random"):
    """One extractive triple, or (None, reason). `norm` caches the normalized text of documents by id; `labels`
    are the questions' labels, if they have any (the rejected answer of a labelled question ends with another)."""
    drawn = draw(q, oracle, ranked, cfg, test, norm if norm is not None else {})
    if isinstance(drawn, str):
        return None, drawn
    rng, with_oracle, shown = drawn
    gold = q["answer"]
    oracle_quote = extractive.oracle_quote(oracle["text"], q["question"], gold)
    if oracle_quote is None:
        return None, "gold answer not found in the oracle"
    kinds = kinds_of(cfg.rejected)
    wrong = []  # the distractors that yield a confident wrong answer, best-ranked first: (doc, sentence, answer)
    match = f"{q['question']} {gold}" if extractive.is_long(oracle_quote, gold) else q["question"]
    for d in shown:  # a long answer's stand-in is the distractor sentence most like question + gold answer
        if wrong and "reworded" not in kinds:  # only reworded looks past the best-ranked one
            break
        sentence = extractive.best_sentence(d["text"], match, avoid=gold)
        answer = sentence and extractive.wrong_answer(oracle_quote, gold, sentence, q["question"],
                                                      d.get("title") or "")
        if answer and extractive.normalize(answer) != extractive.normalize(gold) and sentence not in oracle["text"]:
            wrong.append((d, sentence, answer))
    if not wrong:
        return None, "no distractor yields a rejected answer"
    label = q.get("label")
    chosen = tpl.render("answer.j2", quote=oracle_quote, answer=label or gold) if with_oracle else \
        no_oracle_answer(q, cfg, tpl)
    docs = shown + ([oracle] if with_oracle else [])
    rng.shuffle(docs)
    source, r_sentence, r_answer = wrong[0]
    if order == "lookalike-last" and with_oracle and (i := docs.index(source)) < (j := docs.index(oracle)):
        docs[i], docs[j] = oracle, source
    want = kinds[0] if len(kinds) == 1 else rng.choice(kinds)
    kind = "distractor"
    if label:  # a label (PubMedQA's yes/no/maybe) ends the answers; the rejected one ends with another
        r_answer = rng.choice(sorted({str(x) for x in labels} - {str(label)}) or [r_answer])
    elif want != "distractor" and with_oracle and not extractive.is_long(oracle_quote, gold):
        if want == "misquote" and (fake := extractive.misquote(oracle_quote, gold, r_answer)) is not None:
            r_sentence, kind = fake, "misquote"
        elif want == "misread" and (name := extractive.misread(oracle_quote, q["question"], gold)) is not None:
            source, r_sentence, r_answer, kind = oracle, oracle_quote, name, "misread"
        elif want == "loose" and (fake := extractive.loose(oracle_quote, gold, rng)) is not None:
            source, r_sentence, r_answer, kind = oracle, fake, gold, "loose"
        elif want == "echo" and (fake := extractive.echo(q["question"], gold)) is not None:
            source, r_sentence, r_answer, kind = oracle, fake, gold, "echo"
        elif want == "reworded" and (found := reworded(wrong, gold, oracle)) is not None:
            source, r_sentence, r_answer, kind = *found, gold, "reworded"
    row = make_row(q, oracle, docs, with_oracle, chosen, tpl.render("answer.j2", quote=r_sentence, answer=r_answer),
                   source, tpl)
    row["meta"]["rejected_kind"] = kind
    return row, None
