"""Pure-python answer metrics for `prefopt eval` (no torch): SQuAD-style exact match and token F1 on the final
answer, quote precision against the oracle document, distractor quoting, and yes/no/maybe accuracy.

The functions score one generated answer (its format is read by :mod:`prefopt.raft`); :class:`AnswerScores`
accumulates them over a data set and turns them into the numbers that go into eval.json (``None`` where a metric
does not apply to the data).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass, field

from prefopt.raft import final_answer, quotes, split_documents

YES_NO_MAYBE = ("yes", "no", "maybe")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalization: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_correct(answer: str, gold: str) -> bool:
    """Whether the final answer contains the gold answer as whole words, case, punctuation and the articles
    a / an / the ignored (so "lynx" answers "a lynx")."""
    from prefopt.collect.extractive import contains

    return contains(_ARTICLES.sub(" ", answer.lower()), _ARTICLES.sub(" ", gold.lower()))


def gold_answers(meta: dict) -> list[str]:
    """The gold answers of a row's meta: its label (yes/no/maybe, what the answer ends with) or else `answer`,
    then any further `answers`."""
    gold = meta.get("label") or meta["answer"]
    return [gold, *[a for a in meta.get("answers") or [] if isinstance(a, str)]]


def exact_match(prediction: str, gold: str | list[str]) -> float:
    """1.0 when the normalized prediction equals a normalized gold answer (the best over a list of golds)."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    return float(any(squad_normalize(prediction) == squad_normalize(g) for g in golds))


def token_f1(prediction: str, gold: str | list[str]) -> float:
    """SQuAD token F1 of the normalized bags of words (the best over a list of golds)."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    best = 0.0
    pred = squad_normalize(prediction).split()
    for g in golds:
        ref = squad_normalize(g).split()
        if not pred or not ref:
            best = max(best, float(pred == ref))
            continue
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            precision, recall = common / len(pred), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def in_document(quote: str, document: str) -> bool:
    """The quote appears verbatim in the document (only runs of whitespace may differ)."""
    return " ".join(quote.split()) in " ".join(document.split())


def quote_counts(answer: str, oracle: str | None) -> tuple[int, int]:
    """(quotes found verbatim in the oracle, quotes) of one answer; (0, 0) when the oracle is not known."""
    if oracle is None:
        return 0, 0
    spans = quotes(answer)
    return sum(in_document(q, oracle) for q in spans), len(spans)


def quotes_distractor(answer: str, oracle: str | None, distractors: list[str]) -> bool:
    """The answer quotes a distractor: one of its spans is in a distractor document and not in the oracle."""
    return any(any(in_document(q, d) for d in distractors) and not (oracle and in_document(q, oracle))
               for q in quotes(answer))


def answer_from_distractor(answer: str, oracle: str | None, distractors: list[str]) -> bool:
    """The final answer is a distractor's: a distractor holds its words and the oracle does not. This catches what
    `quotes_distractor` cannot: a quote that pairs the asked entity's name with its look-alike's value."""
    return bool(answer.strip()) and not answer_correct(oracle or "", answer) and any(
        answer_correct(d, answer) for d in distractors)


def yes_no_maybe(text: str) -> str | None:
    """The first of the words yes / no / maybe in the (normalized) final answer, or None."""
    for word in squad_normalize(final_answer(text)).split():
        if word in YES_NO_MAYBE:
            return word
    return None


def gold_decision(meta: dict) -> str | None:
    """The yes/no/maybe label of a row: ``meta.final_decision`` (PubMedQA), else the gold answer itself when it
    is one of those words; None for other data."""
    for value in (meta.get("final_decision"), meta.get("answer")):
        if isinstance(value, str) and squad_normalize(value) in YES_NO_MAYBE:
            return squad_normalize(value)
    return None


@dataclass
class AnswerScores:
    """Running sums of the answer metrics over the generated answers of one model."""

    answers: int = 0
    contains: int = 0
    em: float = 0.0
    f1: float = 0.0
    quotes_in_oracle: int = 0
    quotes_checked: int = 0
    quoting: int = 0  # answers with at least one closed quote
    attributable: int = 0  # answers whose prompt documents line up with meta.doc_ids
    distractor: int = 0
    wrong: int = 0  # wrong attributable answers
    wrong_from_distractor: int = 0
    yesno_total: int = 0
    yesno_correct: int = 0
    per_row: list[dict] = field(default_factory=list)

    def add(self, row: dict, generated: str) -> dict:
        """Score one generated answer to `row` (which has ``meta.answer``); returns its per-row record."""
        meta = row.get("meta") or {}
        golds = gold_answers(meta)
        gold = golds[0]
        answer = final_answer(generated)
        oracle, distractors = split_documents(row)
        good, total = quote_counts(generated, oracle)
        rec = {"id": row.get("id"), "gold": gold, "generated": generated, "final_answer": answer,
               "correct": any(answer_correct(answer, g) for g in golds), "exact_match": exact_match(answer, golds),
               "f1": token_f1(answer, golds), "quotes": total, "quotes_in_oracle": good}
        self.answers += 1
        self.contains += rec["correct"]
        self.em += rec["exact_match"]
        self.f1 += rec["f1"]
        self.quotes_in_oracle += good
        self.quotes_checked += total
        self.quoting += bool(quotes(generated))
        if oracle is not None or distractors:
            self.attributable += 1
            rec["quotes_distractor"] = quotes_distractor(generated, oracle, distractors)
            rec["answer_from_distractor"] = not rec["correct"] and answer_from_distractor(answer, oracle, distractors)
            self.distractor += rec["quotes_distractor"]
            self.wrong += not rec["correct"]
            self.wrong_from_distractor += rec["answer_from_distractor"]
        decision = gold_decision(meta)
        if decision is not None:
            rec["decision"], rec["predicted_decision"] = decision, yes_no_maybe(generated)
            self.yesno_total += 1
            self.yesno_correct += rec["predicted_decision"] == decision
        self.per_row.append(rec)
        return rec

    def metrics(self) -> dict:
        def share(num, den):
            return num / den if den else None

        return {
            "answer_accuracy": share(self.contains, self.answers),
            "exact_match": share(self.em, self.answers),
            "f1": share(self.f1, self.answers),
            "quote_precision": share(self.quotes_in_oracle, self.quotes_checked),
            "quote_rate": share(self.quoting, self.answers),
            "distractor_rate": share(self.distractor, self.attributable),
            "wrong_from_distractor": share(self.wrong_from_distractor, self.wrong),
            "yesno_accuracy": share(self.yesno_correct, self.yesno_total),
            "n_questions": self.answers,
            "n_quotes": self.quotes_checked,
            "n_yesno": self.yesno_total,
        }


def reward_stats(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> dict:
    """DPO's implicit reward r = β·(log π − log π_ref) of each completion (log-probs summed over its tokens):
    the share of pairs with r(chosen) > r(rejected), and the mean margin r(chosen) − r(rejected)."""
    margins = [beta * ((pc - rc) - (pr - rr))
               for pc, pr, rc, rr in zip(policy_chosen, policy_rejected, ref_chosen, ref_rejected)]
    if not margins:
        return {"reward_accuracy": None, "reward_margin": None}
    return {"reward_accuracy": sum(m > 0 for m in margins) / len(margins), "reward_margin": sum(margins) / len(margins)}
