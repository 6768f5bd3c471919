"""The pure-python answer metrics of `prefopt eval` on hand-made examples (no model)."""

import pytest

from prefopt.metrics import (AnswerScores, answer_correct, answer_from_distractor, exact_match, gold_decision,
                             quote_counts, quotes_distractor, reward_stats, squad_normalize, token_f1, yes_no_maybe)
from prefopt.raft import final_answer, quotes, split_documents


def test_final_answer_is_the_text_after_the_tag():
    assert final_answer("##Reason: ... <ANSWER>:  slate ") == "slate"
    assert final_answer("just slate") == "just slate"
    assert final_answer("<ANSWER>: a <ANSWER>: b") == "a <ANSWER>: b"
    # a run-on answer ends at the next marker: the quote it starts again does not count as the answer
    assert final_answer("... <ANSWER>: Tuskaex.##Reason: ##begin_quote##... a falcon.##end_quote##") == "Tuskaex."


def test_an_answer_is_correct_when_it_contains_the_gold_words():
    assert answer_correct("it is built of Slate.", "slate")
    assert answer_correct("lynx", "a lynx") and answer_correct("the lynx", "a lynx")  # articles are not the answer
    assert answer_correct("a slate-roof", "slate")
    assert not answer_correct("slates", "slate")  # whole words
    assert not answer_correct("an otter", "a lynx")
    assert not answer_correct("a", "a")  # nothing left of the gold


def test_squad_normalization_and_exact_match():
    assert squad_normalize("The  Slate-Roof, Inc.!") == "slateroof inc"
    assert squad_normalize("An apple and a pear") == "apple and pear"
    assert exact_match("the Slate.", "slate") == 1.0
    assert exact_match("slate roof", "slate") == 0.0
    assert exact_match("marble", ["slate", "Marble"]) == 1.0  # best over several golds
    assert exact_match("", "") == 1.0


def test_token_f1():
    assert token_f1("slate", "slate") == 1.0
    assert token_f1("granite", "slate") == 0.0
    # pred {built, of, slate} vs gold {slate}: precision 1/3, recall 1 -> F1 0.5
    assert token_f1("built of slate", "slate") == pytest.approx(0.5)
    # duplicates count once per occurrence (bag of words): pred [a1 a1] gold [a1 b] -> p=1/2 r=1/2
    assert token_f1("x x", "x y") == pytest.approx(0.5)
    assert token_f1("the", "slate") == 0.0  # only an article: empty after normalization
    assert token_f1("slate", ["granite", "slate tiles"]) == pytest.approx(2 / 3)


DOCS = ["The main hall of Zalkloth Orchestra is built of slate. It opened in 1873.",
        "The main hall of Mishdroun Orchestra is built of marble.",
        "Bo Tran founded the Vessik Choir."]


def _row(answer="slate", oracle="d0", doc_ids=("d1", "d0", "d2"), docs=None, **meta):
    docs = docs if docs is not None else [DOCS[1], DOCS[0], DOCS[2]]
    user = "".join(f"<DOCUMENT>{d}</DOCUMENT>\n" for d in docs) + "\nQuestion: What is the main hall built of?"
    return {"id": "r", "prompt": [{"role": "system", "content": "Answer from the documents."},
                                  {"role": "user", "content": user}],
            "meta": {"answer": answer, "oracle_id": oracle, "doc_ids": list(doc_ids), **meta}}


def test_documents_come_from_the_prompt_in_doc_ids_order():
    oracle, distractors = split_documents(_row())
    assert oracle == DOCS[0] and distractors == [DOCS[1], DOCS[2]]
    # oracle not shown: every document is a distractor
    oracle, distractors = split_documents(_row(oracle="d9"))
    assert oracle is None and len(distractors) == 3
    # documents that do not line up with doc_ids cannot be attributed
    assert split_documents(_row(doc_ids=("d0", "d1"))) == (None, [])


def test_quote_precision_counts_spans_verbatim_in_the_oracle():
    oracle = DOCS[0]
    good = "##begin_quote##The main hall of Zalkloth Orchestra is built of slate.##end_quote##"
    wrong = "##begin_quote##The main hall is built of slate.##end_quote##"  # not verbatim
    assert quotes(good + " and ##begin_quote##  ##end_quote## <ANSWER>: slate") == [
        "The main hall of Zalkloth Orchestra is built of slate."]  # empty span dropped
    assert quote_counts(f"{good} {wrong} <ANSWER>: slate", oracle) == (1, 2)
    # whitespace may differ (line breaks in a quote), nothing else; an unclosed span is not counted
    assert quote_counts("##begin_quote##It opened\n in   1873.##end_quote##", oracle) == (1, 1)
    assert quote_counts("##begin_quote##It opened in 1873.", oracle) == (0, 0)
    assert quote_counts(good, None) == (0, 0)


def test_distractor_quotes():
    oracle, distractors = DOCS[0], [DOCS[1], DOCS[2]]
    assert quotes_distractor("##begin_quote##built of marble.##end_quote##", oracle, distractors)
    assert not quotes_distractor("##begin_quote##built of slate.##end_quote##", oracle, distractors)
    # a span found in both the oracle and a distractor is not a distractor quote
    assert not quotes_distractor("##begin_quote##The main hall of##end_quote##", oracle, distractors)
    assert not quotes_distractor("<ANSWER>: marble", oracle, distractors)  # no quote at all


def test_answers_taken_from_a_distractor():
    oracle, distractors = DOCS[0], [DOCS[1], DOCS[2]]
    assert answer_from_distractor("marble", oracle, distractors)  # the look-alike's value, whatever was quoted
    assert not answer_from_distractor("slate", oracle, distractors)  # the oracle's
    assert not answer_from_distractor("The main hall", oracle, distractors)  # in both: not attributable
    assert not answer_from_distractor("granite", oracle, distractors)  # in no document: made up
    assert not answer_from_distractor("", oracle, distractors)


def test_yes_no_maybe():
    assert yes_no_maybe("##Reason: ... <ANSWER>: Yes, it does.") == "yes"
    assert yes_no_maybe("<ANSWER>: The answer is no.") == "no"
    assert yes_no_maybe("<ANSWER>: Perhaps") is None
    assert gold_decision({"answer": "A long conclusion.", "final_decision": "maybe"}) == "maybe"
    assert gold_decision({"answer": "No."}) == "no"
    assert gold_decision({"answer": "slate"}) is None


def test_answer_scores_aggregate():
    scores = AnswerScores()
    row = _row()
    scores.add(row, "##Reason: ##begin_quote##The main hall of Zalkloth Orchestra is built of slate.##end_quote## "
                    "<ANSWER>: slate")
    scores.add(row, "##Reason: ##begin_quote##The main hall of Mishdroun Orchestra is built of marble.##end_quote## "
                    "<ANSWER>: marble")
    scores.add(row, "<ANSWER>: it is built of slate")  # contains the gold answer, no quote
    m = scores.metrics()
    assert m["n_questions"] == 3 and m["n_quotes"] == 2
    assert m["answer_accuracy"] == pytest.approx(2 / 3)
    assert m["exact_match"] == pytest.approx(1 / 3)
    # "it is built of slate": 5 tokens, 1 in common -> p=1/5, r=1, F1=1/3
    assert m["f1"] == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert m["quote_precision"] == pytest.approx(1 / 2)
    assert m["quote_rate"] == pytest.approx(2 / 3)
    assert m["distractor_rate"] == pytest.approx(1 / 3)
    assert m["wrong_from_distractor"] == 1.0  # the one wrong answer is the look-alike's value
    assert m["yesno_accuracy"] is None and m["n_yesno"] == 0


def test_a_lookalikes_value_under_the_asked_name_is_a_wrong_answer_from_a_distractor():
    """The typical mistake quotes no document verbatim: distractor_rate misses it, wrong_from_distractor counts it."""
    scores = AnswerScores()
    row = _row()
    twin = scores.add(row, "##Reason: ##begin_quote##The main hall of Zalkloth Orchestra is built of marble."
                           "##end_quote## <ANSWER>: marble")
    made_up = scores.add(row, "<ANSWER>: granite")  # wrong, but no document holds it
    scores.add(row, "<ANSWER>: slate")
    assert twin["answer_from_distractor"] and not twin["quotes_distractor"]
    assert not made_up["answer_from_distractor"]
    m = scores.metrics()
    assert m["distractor_rate"] == 0.0 and m["wrong_from_distractor"] == pytest.approx(1 / 2)


def test_pubmedqa_style_rows_get_yes_no_maybe_accuracy():
    scores = AnswerScores()
    row = _row(answer="Statins lower the risk.", final_decision="yes")
    scores.add(row, "<ANSWER>: Yes. Statins lower the risk.")
    scores.add(row, "<ANSWER>: no")
    scores.add(_row(answer="maybe"), "<ANSWER>: maybe")
    scores.add(_row(answer="slate"), "<ANSWER>: slate")  # not yes/no/maybe data: not counted
    m = scores.metrics()
    assert m["n_yesno"] == 3 and m["yesno_accuracy"] == pytest.approx(2 / 3)


def test_a_label_is_the_gold_of_the_answer():
    scores = AnswerScores()  # PubMedQA rows from `collect rag`: the conclusion is quoted, the label answers
    row = _row(answer="Statins lower the risk of stroke.", final_decision="yes", label="yes")
    assert scores.add(row, "##begin_quote##Statins lower the risk of stroke.##end_quote## <ANSWER>: yes")["correct"]
    assert not scores.add(row, "<ANSWER>: Statins lower the risk of stroke.")["correct"]
    assert scores.metrics()["yesno_accuracy"] == 0.5


def test_metrics_are_none_without_data():
    m = AnswerScores().metrics()
    assert all(m[k] is None for k in ("answer_accuracy", "exact_match", "f1", "quote_precision", "distractor_rate",
                                       "wrong_from_distractor"))


def test_reward_stats():
    # margins: 0.5*((-1 - -2) - (-3 - -3)) = 0.5 ; 0.5*((-2 - -1) - (-1 - -1)) = -0.5 ; 0.5*(0 - (-1 - -3)) = -1
    s = reward_stats([-1, -2, -3], [-3, -1, -1], [-2, -1, -3], [-3, -1, -3], beta=0.5)
    assert s["reward_accuracy"] == pytest.approx(1 / 3)
    assert s["reward_margin"] == pytest.approx((0.5 - 0.5 - 1) / 3)
    assert reward_stats([], [], [], [], 0.1) == {"reward_accuracy": None, "reward_margin": None}
