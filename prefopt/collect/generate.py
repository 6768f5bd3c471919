"""The LLM generators' side of `collect rag`: questions per chunk, and chosen / rejected answers.

Questions (no --questions file): template ``llm_question.j2`` asks for ``questions_per_chunk`` pairs per chunk;
the reply is read line by line (``Question: ...`` or any line ending in ``?``, then an optional
``Answer: ...``). An answer is kept as the gold answer only when it appears in the chunk; otherwise the
question has no gold answer and the chosen answer's own ``<ANSWER>`` stands in for it in verification.

Answers: the chosen answer comes from ``llm_chosen.j2`` (the oracle, the question and the gold answer), the
rejected one from ``llm_rejected.j2`` (the top-ranked shown distractor, which becomes
``meta.rejected_source_id``). Both are then verified like extractive rows, plus two rules for the chosen
answer: it ends in ``<ANSWER>:``, and when the gold answer is short (at most 8 words) it gives it.
Requests are sent in blocks, so the clients' threads or batches stay busy and progress is saved block by block.
"""

from __future__ import annotations

import re

from prefopt.collect import extractive
from prefopt.collect.rows import draw, make_row, no_oracle_answer, question_id
from prefopt.raft import final_answer

BLOCK = 64
SHORT_GOLD = 8
_NUMBERING = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")
_Q = re.compile(r"^(?:\*\*)?(?:question|q)\s*\d*\s*[:.]\s*(?:\*\*)?\s*", re.I)
_A = re.compile(r"^(?:\*\*)?(?:answer|a)\s*\d*\s*[:.]\s*(?:\*\*)?\s*", re.I)


def parse_questions(text: str, n: int, doc_text: str) -> list[tuple[str, str]]:
    """Up to n distinct (question, gold answer or "") pairs from an LLM reply."""
    pairs: list[list[str]] = []
    for line in text.splitlines():
        line = _NUMBERING.sub("", line.strip()).strip()
        if not line:
            continue
        if _A.match(line) and pairs and not pairs[-1][1]:
            pairs[-1][1] = _A.sub("", line).strip().rstrip(".")
        elif _Q.match(line) or line.endswith("?"):
            question = _Q.sub("", line).strip()
            if len(extractive.words(question)) >= 3:
                pairs.append([question, ""])
    out, seen = [], set()
    for question, answer in pairs:
        key = extractive.normalize(question)
        if key in seen:
            continue
        seen.add(key)
        out.append((question, answer if answer and extractive.contains(doc_text, answer) else ""))
    return out[:n]


def _user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def questions(cfg, docs: list[dict], client, tpl, shard) -> list[dict]:
    """Questions written by the LLM for each chunk of this shard, with stable ids."""
    from prefopt.progress import Progress

    chunks = [d for j, d in enumerate(docs) if shard is None or j % shard[1] == shard[0]]
    out: list[dict] = []
    with Progress(len(chunks), "prefopt collect rag: questions from", unit="chunks") as progress:
        for start in range(0, len(chunks), BLOCK):
            block = chunks[start:start + BLOCK]
            replies = client.complete([_user(tpl.render("llm_question.j2", doc=d, n=cfg.questions_per_chunk))
                                       for d in block])
            for d, text in zip(block, replies):
                for j, (question, answer) in enumerate(parse_questions(text or "", cfg.questions_per_chunk, d["text"])):
                    q = {"question": question, "answer": answer, "doc_id": d["id"], "generated": True}
                    q["_qid"] = question_id(q, f"{d['id']}/{j}")
                    out.append(q)
            progress.advance(len(block))
    return out


def check_chosen(chosen: str, gold: str) -> str | None:
    answer = final_answer(chosen, default="")
    if not answer:
        return "chosen has no <ANSWER>"
    if gold and len(extractive.words(gold)) <= SHORT_GOLD and not extractive.contains(answer, gold):
        return "chosen answer does not give the gold answer"
    return None


def llm_rows(items, cfg, tpl, client, test: bool, norm: dict, finish) -> None:
    """For each (question, oracle, ranked documents): an LLM-written row, or a reason, passed to `finish`."""
    for start in range(0, len(items), BLOCK):
        plans, messages = [], []
        for q, oracle, ranked in items[start:start + BLOCK]:
            drawn = draw(q, oracle, ranked, cfg, test, norm)
            if isinstance(drawn, str):
                finish(q, oracle, None, drawn)
                continue
            rng, with_oracle, shown = drawn
            if not with_oracle and cfg.no_oracle == "answer" and not q["answer"]:
                finish(q, oracle, None, "no gold answer to answer from memory (--no-oracle answer)")
                continue
            docs = shown + ([oracle] if with_oracle else [])
            rng.shuffle(docs)
            plan = {"q": q, "oracle": oracle, "docs": docs, "with": with_oracle, "source": shown[0], "c": None}
            if with_oracle:
                plan["c"] = len(messages)
                messages.append(_user(tpl.render("llm_chosen.j2", question=q["question"], doc=oracle, answer=q["answer"])))
            plan["r"] = len(messages)
            messages.append(_user(tpl.render("llm_rejected.j2", question=q["question"], doc=shown[0], answer=q["answer"])))
            plans.append(plan)
        replies = client.complete(messages) if messages else []
        errors = dict(client.errors)
        for p in plans:
            q, oracle = p["q"], p["oracle"]
            err = next((errors[i] for i in (p["c"], p["r"]) if i is not None and i in errors), None)
            if err:
                finish(q, oracle, None, err)
                continue
            chosen = replies[p["c"]].strip() if p["with"] else no_oracle_answer(q, cfg, tpl)
            reason = check_chosen(chosen, q["answer"]) if p["with"] else None
            if reason:
                finish(q, oracle, None, reason)
                continue
            row = make_row(q, oracle, p["docs"], p["with"], chosen, replies[p["r"]].strip(), p["source"], tpl)
            finish(q, oracle, row, None, q["answer"] or final_answer(chosen, default=""))
