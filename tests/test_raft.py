"""The RAFT answer format as prefopt.raft reads it: final answer, quotes, documents (no model)."""

from prefopt.raft import (after_documents, final_answer, has_answer, prompt_documents, quote_spans, quotes,
                          reverse_documents, split_documents)


def test_the_first_answer_tag_counts_up_to_the_next_marker():
    two = "##Reason: ... <ANSWER>: slate ##Reason: or rather <ANSWER>: marble"
    assert final_answer(two) == final_answer(two, default="") == "slate"
    assert final_answer("<ANSWER>: a <ANSWER>: b") == "a <ANSWER>: b"  # no ## between: all of it
    assert final_answer("##Reason: ##begin_quote##x##end_quote## <ANSWER>:  granite \n") == "granite"


def test_no_tag_is_told_apart_from_an_empty_answer():
    assert not has_answer("##Reason: I know it. slate") and has_answer("<ANSWER>:")
    assert final_answer("just slate ##Reason: more") == "just slate"  # eval scores the untagged text
    assert final_answer("just slate", default="") == ""  # collect rejects it
    assert final_answer("... <ANSWER>:  ", default="none") == ""


def test_quotes():
    text = ("##begin_quote##It opened\n in   1873.##end_quote## ##begin_quote##  ##end_quote## "
            "##begin_quote##cut off by the budget")
    assert quote_spans(text) == ["It opened\n in   1873.", "  "]  # as written, the empty one too
    assert quotes(text) == ["It opened in 1873."]


def _row(order=("d0", "d1", "d2"), oracle="d1") -> dict:
    texts = {"d0": "Zero is built of marble.", "d1": "One is built of slate.", "d2": "Two is built of oak."}
    user = "".join(f"<DOCUMENT>{texts[d]}</DOCUMENT>\n" for d in order) + "\nQuestion: What is One built of?"
    return {"prompt": [{"role": "system", "content": "Answer."}, {"role": "user", "content": user}],
            "meta": {"doc_ids": list(order), "oracle_id": oracle}}


def test_documents_split_into_oracle_and_distractors():
    row = _row()
    assert prompt_documents(row["prompt"]) == ["Zero is built of marble.", "One is built of slate.",
                                               "Two is built of oak."]
    assert after_documents(row["prompt"][1]["content"]) == "Question: What is One built of?"
    assert split_documents(row) == ("One is built of slate.", ["Zero is built of marble.", "Two is built of oak."])
    assert split_documents(_row(oracle="d9"))[0] is None  # the oracle is not shown
    assert split_documents({**row, "meta": {"doc_ids": ["d0"], "oracle_id": "d0"}}) == (None, [])


def test_reverse_documents_reverses_blocks_and_ids_only():
    row = _row()
    flipped = reverse_documents(row)
    assert flipped["prompt"] == _row(order=("d2", "d1", "d0"))["prompt"]
    assert flipped["meta"] == {"doc_ids": ["d2", "d1", "d0"], "oracle_id": "d1", "documents_reversed": True}
    assert split_documents(flipped)[0] == split_documents(row)[0]
    assert reverse_documents(flipped)["prompt"] == row["prompt"] and row["meta"]["doc_ids"] == ["d0", "d1", "d2"]

