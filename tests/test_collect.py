"""The RAG collector: grounding of chosen and rejected, the split, the counts, the oracle rate."""

import json
import re

import pytest

from prefopt.collect import extractive
from prefopt.collect.rag import RagConfig, run
from prefopt.data import read_jsonl, row_problem
from prefopt.errors import PrefoptError
from conftest import QUICKSTART

QUOTE = re.compile(r"##begin_quote##(.*?)##end_quote##", re.S)


def _docs():
    return {d["id"]: d for d in read_jsonl(QUICKSTART / "corpus.jsonl")}


def test_rows_are_grounded(rag_data):
    docs = _docs()
    rows = list(read_jsonl(rag_data / "train.jsonl")) + list(read_jsonl(rag_data / "test.jsonl"))
    assert rows
    for row in rows:
        assert row_problem(row) is None
        meta = row["meta"]
        user = row["prompt"][-1]["content"]
        shown = [docs[i]["text"] for i in meta["doc_ids"]]
        # the prompt shows the documents in meta order, and the oracle exactly when it says so
        assert [user.index(t) for t in shown] == sorted(user.index(t) for t in shown)
        assert (meta["oracle_id"] in meta["doc_ids"]) == meta["oracle_in_context"]
        oracle = docs[meta["oracle_id"]]["text"]
        source = docs[meta["rejected_source_id"]]["text"]
        assert meta["rejected_source_id"] in meta["doc_ids"] and meta["rejected_source_id"] != meta["oracle_id"]
        rejected = row["rejected"][0]["content"]
        for quote in QUOTE.findall(rejected):
            assert quote in source and quote not in oracle
        if meta["oracle_in_context"]:
            chosen = row["chosen"][0]["content"]
            quotes = QUOTE.findall(chosen)
            assert quotes and all(q in oracle for q in quotes)
            assert chosen.endswith(f"<ANSWER>: {meta['answer']}")
        r_answer = rejected.split("<ANSWER>:")[1]
        assert extractive.normalize(r_answer) != extractive.normalize(meta["answer"])


def test_split_by_document_and_counts(rag_data):
    card = json.loads((rag_data / "card.json").read_text())
    train = list(read_jsonl(rag_data / "train.jsonl"))
    test = list(read_jsonl(rag_data / "test.jsonl"))
    dpo = list(read_jsonl(rag_data / "dpo.jsonl"))
    rejects = list(read_jsonl(rag_data / "rejects.jsonl"))
    assert card["questions_in"] == len(train) + len(dpo) + len(test) + len(rejects) == 120
    assert card["kept"] == {"train": len(train), "dpo": len(dpo), "test": len(test)}
    ids = lambda rows: {i for r in rows for i in r["meta"]["doc_ids"] + [r["meta"]["oracle_id"]]}  # noqa: E731
    assert ids(train) and ids(test) and not (ids(train) | ids(dpo)) & ids(test)
    assert all(r["meta"]["oracle_in_context"] for r in test)
    assert all(r["reason"] for r in rejects)


def test_dpo_split_holds_other_questions_with_the_oracle_and_misquotes(rag_data, tmp_path):
    """--dpo-share (default 0.375) sets train questions apart in dpo.jsonl, each prompt with its oracle and a
    misquote, misread or echo as the rejected answer; the draw is per question, so a shard agrees with the whole run."""
    train, dpo = (list(read_jsonl(rag_data / f"{s}.jsonl")) for s in ("train", "dpo"))
    questions = lambda rows: {r["meta"]["question"] for r in rows}  # noqa: E731
    assert not questions(train) & questions(dpo)
    assert 0.2 < len(dpo) / (len(train) + len(dpo)) < 0.55
    assert all(r["meta"]["oracle_in_context"] for r in dpo)
    kinds = [r["meta"]["rejected_kind"] for r in dpo]
    assert set(kinds) <= {"misquote", "misread", "echo", "distractor"}
    assert kinds.count("misquote") > kinds.count("misread") > 0 and kinds.count("echo") > 0
    assert {r["meta"]["rejected_kind"] for r in train} == {"distractor"}
    common = dict(corpus=str(QUICKSTART / "corpus.jsonl"), questions=str(QUICKSTART / "questions.jsonl"),
                  distractors=3, p=0.8, seed=1)
    run(RagConfig(**common, output_dir=str(tmp_path / "shard"), shard="1/2"))
    shard = list(read_jsonl(tmp_path / "shard" / "dpo.jsonl"))
    assert shard and {r["id"] for r in shard} < {r["id"] for r in dpo}
    run(RagConfig(**common, output_dir=str(tmp_path / "none"), dpo_share=0.0))
    assert not (tmp_path / "none" / "dpo.jsonl").exists()
    assert len(list(read_jsonl(tmp_path / "none" / "train.jsonl"))) == len(train) + len(dpo)
    with pytest.raises(PrefoptError, match="dpo-rejected"):
        RagConfig(corpus="c", questions="q", dpo_rejected="misquote,typo")


def test_dpo_order_lookalike_last_puts_the_rejected_answers_document_after_the_oracle(tmp_path):
    """--dpo-order lookalike-last reorders dpo.jsonl's prompts only: the same rows, the distractor a misquote draws
    on moved after the oracle (by swapping the two), train.jsonl untouched."""
    common = dict(corpus=str(QUICKSTART / "corpus.jsonl"), questions=str(QUICKSTART / "questions.jsonl"),
                  distractors=3, seed=1, dpo_share=0.5, dpo_rejected="misquote")
    run(RagConfig(**common, output_dir=str(tmp_path / "random")))
    run(RagConfig(**common, output_dir=str(tmp_path / "last"), dpo_order="lookalike-last"))
    before = lambda m: m["doc_ids"].index(m["rejected_source_id"]) < m["doc_ids"].index(m["oracle_id"])  # noqa: E731
    rows = {name: list(read_jsonl(tmp_path / name / "dpo.jsonl")) for name in ("random", "last")}
    assert sum(before(r["meta"]) for r in rows["random"]) > 0
    assert not any(before(r["meta"]) for r in rows["last"])
    for a, b in zip(*rows.values(), strict=True):
        assert sorted(a["meta"]["doc_ids"]) == sorted(b["meta"]["doc_ids"]) and a["chosen"] == b["chosen"] \
            and a["rejected"] == b["rejected"]
    assert (tmp_path / "random" / "train.jsonl").read_text() == (tmp_path / "last" / "train.jsonl").read_text()
    with pytest.raises(PrefoptError, match="dpo_order"):
        RagConfig(corpus="c", questions="q", dpo_order="first")
    with pytest.raises(PrefoptError, match="dpo_order"):
        RagConfig(corpus="c", dpo_order="lookalike-last", generator="openai")


def test_oracle_rate_follows_p(tmp_path):
    run(RagConfig(corpus=str(QUICKSTART / "corpus.jsonl"), questions=str(QUICKSTART / "questions.jsonl"),
                  output_dir=str(tmp_path), distractors=2, p=0.5, test_size=0.0, seed=3))
    rows = list(read_jsonl(tmp_path / "train.jsonl"))
    rate = sum(r["meta"]["oracle_in_context"] for r in rows) / len(rows)
    assert abs(rate - 0.5) < 0.12  # 120 draws: 2.6 standard deviations
    missing = [r for r in rows if not r["meta"]["oracle_in_context"]]
    assert missing and all("<ANSWER>: The documents do not say." in r["chosen"][0]["content"] for r in missing)
    assert all(len(r["meta"]["doc_ids"]) == 3 for r in missing)  # K+1 distractors when the oracle is out


def test_random_retriever_and_determinism(tmp_path):
    kwargs = dict(corpus=str(QUICKSTART / "corpus.jsonl"), questions=str(QUICKSTART / "questions.jsonl"),
                  distractors=3, retriever="random", seed=5)
    run(RagConfig(output_dir=str(tmp_path / "a"), **kwargs))
    run(RagConfig(output_dir=str(tmp_path / "b"), **kwargs))
    assert (tmp_path / "a" / "train.jsonl").read_text() == (tmp_path / "b" / "train.jsonl").read_text()


def test_aligned_answer_takes_the_matching_slot():
    oracle = "The main hall of Zalkloth Orchestra is built of slate."
    other = "The main hall of Mishdroun Orchestra is built of marble."
    assert extractive.aligned_answer(oracle, "slate", other) == "marble"
    assert extractive.aligned_answer("It was founded by Ada Lovel.", "Ada Lovel", "It was founded by Bo Tran.") == "Bo Tran"
    assert extractive.aligned_answer("No gold here.", "slate", other) is None
    # another sentence pattern: the slot is still found between matching words, and at the sentence's end
    assert extractive.aligned_answer("The Kelo newt lives up to 851 metres high.", "851",
                                     "Surveys found the Remi newt at up to 1471 metres high.") == "1471"
    assert extractive.aligned_answer("The Kelo newt is hunted most by the stoat.", "stoat",
                                     "The animal that hunts the Remi newt most is the owl.") == "owl"


def test_aligned_answer_gives_no_answer_rather_than_a_word_that_is_no_value():
    def wrong(oracle, gold, other, question, title=""):
        return extractive.aligned_answer(oracle, gold, other, question, title)

    alt = "Up to what altitude in metres is the Kelo newt found?"
    # after "altitude of" the other sentence has "up": a word of the question, and no number
    assert extractive.aligned_answer("The Kelo newt is found up to an altitude of 851 metres.", "851",
                                     "Surveys have found the Remi newt at an altitude of up to 1471 metres.") == "up"
    assert wrong("The Kelo newt is found up to an altitude of 851 metres.", "851",
                 "Surveys have found the Remi newt at an altitude of up to 1471 metres.", alt) == "1471"
    # a sentence about another thing (it shares only the title's words with the question) holds no value for it
    region = "In which region does the Kelo newt live?"
    assert wrong("The only region where the Kelo newt lives is the Nola Gorge.", "Nola Gorge",
                 "Keepers report that the Remi newt fares poorly in captivity.", region, "Remi newt") is None
    assert wrong("The only region where the Kelo newt lives is the Nola Gorge.", "Nola Gorge",
                 "As a rule the Remi newt lives in the Fose Steppe, a region it never leaves.", region,
                 "Remi newt") == "Fose Steppe"
    # a name where the gold answer is a common noun, or a function word, is no answer of the same kind
    hunts = "Which animal hunts the Kelo newt most?"
    assert wrong("The Kelo newt is hunted most by the stoat.", "stoat",
                 "Of all animals, the mole hunts the Remi newt most.", hunts, "Remi newt") == "mole"
    assert wrong("Of all animals, the stoat hunts the Kelo newt most.", "stoat",
                 "The animal that hunts the Remi newt most is the mole.", hunts, "Remi newt") == "mole"
    assert wrong("The Kelo newt has spots on its back as markings.", "spots",
                 "On its back, the Remi newt has markings of chevrons.",
                 "What markings does the Kelo newt have on its back?", "Remi newt") is None


def test_synthetic_writes_the_bundled_quickstart_corpus(tmp_path):
    from prefopt.synthetic import main

    argv = ["synthetic", str(tmp_path), "--entities", "60", "--facts-per-doc", "2"]  # as its docstring says
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", argv)
        main()
    for name in ("corpus.jsonl", "questions.jsonl"):
        assert (tmp_path / name).read_bytes() == (QUICKSTART / name).read_bytes()


def test_synthetic_twins_share_kind_group_and_fact_types_and_state_their_answers():
    from prefopt.synthetic import FACT_TYPES, make_corpus

    docs, questions = make_corpus(40, 3, seed=4)
    assert (docs, questions) == make_corpus(40, 3, seed=4)
    assert len(docs) == 40 and len(questions) == 120 and {q["fact_type"] for q in questions} <= set(FACT_TYPES)
    text = {d["id"]: d["text"] for d in docs}
    assert all(q["answer"] in text[q["doc_id"]] for q in questions)
    types = {}
    for q in questions:
        types.setdefault(q["doc_id"], []).append(q["fact_type"])
    for first, twin in zip(docs[::2], docs[1::2]):
        assert first["group"] == twin["group"] and first["kind"] == twin["kind"]
        assert types[first["id"]] == types[twin["id"]] and first["title"] != twin["title"]
    assert len({d["group"] for d in make_corpus(10, 2, seed=4, twins=False)[0]}) == 10


def test_pinned_split_of_the_documents_wins_over_test_size(tmp_path):
    import random

    from prefopt.synthetic import make_corpus, write_jsonl

    docs, questions = make_corpus(40, 3, seed=2)
    r, split = random.Random(2), {}
    for d in docs:  # a twin pair goes to one side, as the outcome experiment's corpora pin it
        d["split"] = split.setdefault(d["group"], "test" if r.random() < 0.3 else "train")
    write_jsonl(tmp_path / "corpus.jsonl", docs)
    write_jsonl(tmp_path / "questions.jsonl", questions)
    run(RagConfig(corpus=str(tmp_path / "corpus.jsonl"), questions=str(tmp_path / "questions.jsonl"),
                  output_dir=str(tmp_path / "rag"), distractors=2, retriever="random", test_size=0.0))
    split = {d["id"]: d["split"] for d in docs}
    train = list(read_jsonl(tmp_path / "rag" / "train.jsonl"))
    test = list(read_jsonl(tmp_path / "rag" / "test.jsonl"))
    assert train and test  # --test-size 0 would put everything in train: the documents' `split` wins
    assert all(split[i] == "train" for r in train for i in r["meta"]["doc_ids"] + [r["meta"]["oracle_id"]])
    assert all(split[i] == "test" for r in test for i in r["meta"]["doc_ids"])


def test_misquote_rejected_is_the_oracle_sentence_with_the_answer_swapped(rag_data, tmp_path):
    from prefopt.collect.verify import TokenCounter, check_rag

    run(RagConfig(corpus=str(QUICKSTART / "corpus.jsonl"), questions=str(QUICKSTART / "questions.jsonl"),
                  output_dir=str(tmp_path), distractors=3, p=0.8, seed=1, rejected="misquote"))
    plain = {r["id"]: r for r in read_jsonl(rag_data / "train.jsonl")}  # the same settings, distractor rejected
    rows = list(read_jsonl(tmp_path / "train.jsonl"))
    assert [r["id"] for r in rows] == list(plain)
    fakes = [r for r in rows if r["meta"]["rejected_kind"] == "misquote"]
    assert len(fakes) == sum(r["meta"]["oracle_in_context"] for r in rows)  # every row that shows the oracle
    for r in rows:
        assert r["prompt"] == plain[r["id"]]["prompt"] and r["chosen"] == plain[r["id"]]["chosen"]
    for r in fakes:
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        wrong = rejected.split("<ANSWER>:")[1].strip()
        assert rejected != chosen and rejected.replace(wrong, r["meta"]["answer"]) == chosen
    # verification: a "misquote" that is not the oracle's sentence is rejected
    r = fakes[0]
    bad = {**r, "rejected": [{"role": "assistant", "content": r["rejected"][0]["content"].replace(
        "The document says ##begin_quote##", "The document says ##begin_quote##Surely ")}]}
    oracle = next(d["text"] for d in read_jsonl(QUICKSTART / "corpus.jsonl") if d["id"] == r["meta"]["oracle_id"])
    assert check_rag(r, oracle, "", r["meta"]["answer"], TokenCounter(None), 0) is None
    assert check_rag(bad, oracle, "", r["meta"]["answer"], TokenCounter(None), 0).startswith("misquote")
    # the wrong value also stands elsewhere in the quote (in "often"): only the swapped place is undone
    oracle = "The Kelo newt often lays 12 eggs at a time. It lives in reeds."
    swapped = {**r, "meta": {**r["meta"], "answer": "12"}, "chosen": [{"role": "assistant", "content":
               "##Reason: The document says ##begin_quote##The Kelo newt often lays 12 eggs at a time.##end_quote## "
               "<ANSWER>: 12"}], "rejected": [{"role": "assistant", "content": "##Reason: The document says "
               "##begin_quote##The Kelo newt often lays ten eggs at a time.##end_quote## <ANSWER>: ten"}]}
    assert check_rag(swapped, oracle, "", "12", TokenCounter(None), 0) is None


def test_misread_answers_with_the_asked_entity_name():
    q = "What animal is the mascot of Naerfil Academy?"
    assert extractive.misread("The mascot of Naerfil Academy is an otter.", q, "an otter") == "Naerfil Academy"
    assert extractive.misread("Figo was founded in 1820.", "When was Figo founded?", "1820") == "Figo"
    assert extractive.misread("It was founded by Ada Lovel.", "Who founded it?", "Ada Lovel") is None


def test_mixed_rejected_kinds_quote_the_oracle_right_or_swapped(tmp_path):
    """`--rejected misquote,misread` draws a kind per row; a misread row quotes the oracle's sentence as chosen
    does and differs only in the answer, the asked entity's name."""
    from prefopt.collect.verify import TokenCounter, check_rag

    run(RagConfig(corpus=str(QUICKSTART / "corpus.jsonl"), questions=str(QUICKSTART / "questions.jsonl"),
                  output_dir=str(tmp_path), distractors=3, p=1.0, seed=1, rejected="misquote, misread"))
    rows = list(read_jsonl(tmp_path / "train.jsonl"))
    kinds = [r["meta"]["rejected_kind"] for r in rows]
    assert {"misquote", "misread"} <= set(kinds) <= {"misquote", "misread", "distractor"}
    corpus = {d["id"]: d["text"] for d in read_jsonl(QUICKSTART / "corpus.jsonl")}
    for r in (r for r in rows if r["meta"]["rejected_kind"] == "misread"):
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        head, name = rejected.split("<ANSWER>:")
        assert chosen.startswith(head) and extractive.contains(r["meta"]["question"], name)
        assert r["meta"]["rejected_source_id"] == r["meta"]["oracle_id"]
    # verification: a misread whose quote is not the oracle's is rejected; a plain distractor row quoting the
    # oracle still is
    oracle = corpus[r["meta"]["oracle_id"]]
    assert check_rag(r, oracle, oracle, r["meta"]["answer"], TokenCounter(None), 0) is None
    bad = {**r, "rejected": [{"role": "assistant", "content": rejected.replace("##begin_quote##", "##begin_quote##Surely ")}]}
    assert check_rag(bad, oracle, oracle, r["meta"]["answer"], TokenCounter(None), 0) == "misread does not quote the oracle"
    plain = {**r, "meta": {**r["meta"], "rejected_kind": "distractor"}}
    assert check_rag(plain, oracle, oracle, r["meta"]["answer"], TokenCounter(None), 0) == "rejected quote appears in the oracle"
    with pytest.raises(PrefoptError, match="rejected"):
        RagConfig(corpus="c", questions="q", rejected="misquote,typo")


def test_pubmedqa_rows_quote_the_conclusion_and_answer_with_the_label(tmp_path):
    """PubMedQA's format (as ../shared/data/pubmedqa_pqal_dev.json): chosen quotes the conclusion and ends with the
    yes/no/maybe label; rejected quotes a distractor and ends with another label."""
    from prefopt.collect.pubmedqa import convert

    topics = ["statins", "aspirin", "insulin", "metformin", "warfarin", "heparin", "ibuprofen", "codeine",
              "lithium", "digoxin", "propofol", "ketamine"]
    items = {str(1000 + i): {"QUESTION": f"Does {t} lower the risk of stroke in older adults?",
                             "CONTEXTS": [f"We followed {100 + i} older adults who took {t} for {i + 2} years.",
                                          f"Strokes were counted in every patient taking {t}."],
                             "LONG_ANSWER": f"Taking {t} for {i + 2} years changed the stroke rate by {i + 1} percent.",
                             "final_decision": ["yes", "no", "maybe"][i % 3]} for i, t in enumerate(topics)}
    (tmp_path / "pqa.json").write_text(json.dumps(items))
    corpus, questions = convert(tmp_path / "pqa.json", tmp_path)
    run(RagConfig(corpus=str(corpus), questions=str(questions), output_dir=str(tmp_path / "rag"), distractors=2, p=1.0,
                  test_size=0.0, dpo_share=0.0))
    rows = list(read_jsonl(tmp_path / "rag" / "train.jsonl"))
    assert len(rows) == 12
    for r in rows:
        meta = r["meta"]
        assert meta["label"] == meta["final_decision"] in ("yes", "no", "maybe")
        assert r["chosen"][0]["content"].endswith(f"<ANSWER>: {meta['label']}")
        assert meta["answer"] in r["chosen"][0]["content"]  # the conclusion, quoted
        wrong = r["rejected"][0]["content"].rsplit("<ANSWER>: ", 1)[1]
        assert wrong in ("yes", "no", "maybe") and wrong != meta["label"]


def _rows_of_kind(tmp_path, kind: str) -> tuple[list[dict], dict[str, str]]:
    """The train rows of `collect rag --rejected KIND` on the quickstart corpus that got that kind, and the
    corpus's texts by id."""
    run(RagConfig(corpus=str(QUICKSTART / "corpus.jsonl"), questions=str(QUICKSTART / "questions.jsonl"),
                  output_dir=str(tmp_path), distractors=3, p=1.0, seed=1, rejected=kind))
    rows = [r for r in read_jsonl(tmp_path / "train.jsonl") if r["meta"]["rejected_kind"] == kind]
    assert rows
    return rows, {d["id"]: d["text"] for d in read_jsonl(QUICKSTART / "corpus.jsonl")}


def test_loose_rejected_leaves_one_word_out_of_the_oracle_quote(tmp_path):
    """`--rejected loose`: the right answer, with the chosen quote one inner word short (never a word of the
    gold answer), so the pair teaches verbatim quoting alone."""
    import random

    from prefopt.collect.verify import TokenCounter, check_rag

    quote = "The main hall of Ruxpeth Academy is built of granite."
    drops = {extractive.loose(quote, "granite", random.Random(i)) for i in range(200)}
    assert "The main hall of Ruxpeth Academy built of granite." in drops and len(drops) == 8
    assert all("granite." in d for d in drops) and extractive.loose("granite", "granite", random.Random(0)) is None
    rows, corpus = _rows_of_kind(tmp_path, "loose")
    for r in rows:
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert chosen.split("<ANSWER>:")[1] == rejected.split("<ANSWER>:")[1]
        c_words, r_words = extractive.words(chosen), extractive.words(rejected)
        assert len(r_words) == len(c_words) - 1 and any(c_words[:i] + c_words[i + 1:] == r_words
                                                        for i in range(len(c_words)))
    # verification: a loose row with a wrong answer, or with words the oracle lacks, is rejected
    r, oracle = rows[0], corpus[rows[0]["meta"]["oracle_id"]]
    assert check_rag(r, oracle, oracle, r["meta"]["answer"], TokenCounter(None), 0) is None
    text = r["rejected"][0]["content"]
    wrong = {**r, "rejected": [{"role": "assistant", "content": text.split("<ANSWER>:")[0] + "<ANSWER>: Figo"}]}
    assert check_rag(wrong, oracle, oracle, r["meta"]["answer"], TokenCounter(None), 0) == "loose answer is not the gold answer"
    foreign = {**r, "rejected": [{"role": "assistant", "content": text.replace("##begin_quote##", "##begin_quote##Surely ")}]}
    assert check_rag(foreign, oracle, oracle, r["meta"]["answer"], TokenCounter(None), 0).startswith("loose quotes")


def test_echo_rejected_quotes_the_question_turned_into_a_statement(tmp_path):
    """`--rejected echo`: the right answer, quoting the question's words with the answer added, the loose quote
    SFT models wrote for unseen sentence patterns ("The main hall of X built of granite.")."""
    from prefopt.collect.verify import TokenCounter, check_rag

    assert extractive.echo("What is the main hall of Ruxpeth Academy built of?", "granite") == \
        "The main hall of Ruxpeth Academy built of granite."
    assert extractive.echo("Who founded Ruxpeth Academy?", "Ola Brun") == "Founded Ruxpeth Academy Ola Brun."
    assert extractive.echo("Why?", "granite") is None
    rows, corpus = _rows_of_kind(tmp_path, "echo")
    for r in rows:
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert chosen.split("<ANSWER>:")[1] == rejected.split("<ANSWER>:")[1]
        quote = rejected.split("##begin_quote##")[1].split("##end_quote##")[0]
        assert quote == extractive.echo(r["meta"]["question"], r["meta"]["answer"])
        assert not extractive.contains(corpus[r["meta"]["oracle_id"]], quote)
    # verification: an echo row whose quote holds a word the question lacks is rejected
    r, oracle = rows[0], corpus[rows[0]["meta"]["oracle_id"]]
    assert check_rag(r, oracle, oracle, r["meta"]["answer"], TokenCounter(None), 0) is None
    text = r["rejected"][0]["content"].replace("##begin_quote##", "##begin_quote##Surely ")
    foreign = {**r, "rejected": [{"role": "assistant", "content": text}]}
    assert check_rag(foreign, oracle, oracle, r["meta"]["answer"], TokenCounter(None), 0).startswith("echo quotes")


def test_reworded_rejected_states_the_oracle_fact_in_a_distractor_words(tmp_path):
    """`--rejected reworded`: the right answer, quoting the distractor's sentence with the asked entity's name and
    value, a quote in no document (what SFT models write for an oracle phrased unlike their training sentences)."""
    from prefopt.collect.verify import TokenCounter, check_rag

    assert extractive.reworded("Measured from head to tail, the Digetu shrimp is 359 millimetres long.", "359",
                               "97", "Digetu shrimp", "Sekefe shrimp") == \
        "Measured from head to tail, the Sekefe shrimp is 97 millimetres long."
    assert extractive.reworded("The Digetu bowl holds an owl.", "owl", "ibis", "Digetu", "Sekefe") == \
        "The Sekefe bowl holds an ibis."  # whole words only: not the "owl" of "bowl"
    assert extractive.reworded("It is 359 millimetres long.", "359", "97", "Digetu shrimp", "Sekefe shrimp") is None
    assert extractive.reworded("The Digetu shrimp is 359 mm long.", "359", "97", "", "Sekefe shrimp") is None
    phrasings = ("A grown {} is {} millimetres long.", "Measured from head to tail, the {} is {} millimetres long.")
    docs = [{"id": f"d{i}", "title": f"Ka{c}o shrimp", "group": f"g{i}",
             "text": phrasings[i % 2].format(f"Ka{c}o shrimp", 10 + i) + f" The Ka{c}o shrimp is seldom seen."}
            for i, c in enumerate("bcdfghjklmnp")]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(
        {"question": f"How many millimetres long is the {d['title']}?", "answer": str(10 + i), "doc_id": d["id"]})
        + "\n" for i, d in enumerate(docs)))
    run(RagConfig(corpus=str(tmp_path / "corpus.jsonl"), questions=str(tmp_path / "questions.jsonl"),
                  output_dir=str(tmp_path / "out"), retriever="bm25", distractors=2, p=1.0, dpo_share=0,
                  rejected="reworded"))
    rows = [r for f in ("train", "test") for r in read_jsonl(tmp_path / "out" / f"{f}.jsonl")]
    reworded = [r for r in rows if r["meta"]["rejected_kind"] == "reworded"]
    texts = {d["id"]: d["text"] for d in docs}
    assert reworded and len(reworded) < len(rows)  # a distractor phrased like the oracle keeps the distractor kind
    for r in reworded:
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert chosen.split("<ANSWER>:")[1] == rejected.split("<ANSWER>:")[1]
        quote = rejected.split("##begin_quote##")[1].split("##end_quote##")[0]
        title = next(d["title"] for d in docs if d["id"] == r["meta"]["oracle_id"])
        assert title in quote and r["meta"]["answer"] in quote
        assert not any(extractive.contains(t, quote) for t in texts.values())
        def frame(q: str) -> str:  # the sentence's pattern, with its entity and value left out
            return q.replace(title, "{}", 1).replace(r["meta"]["answer"], "{}", 1)

        oracle_quote = chosen.split("##begin_quote##")[1].split("##end_quote##")[0]
        assert frame(quote) in phrasings and frame(oracle_quote) in phrasings and frame(quote) != frame(oracle_quote)
    # verification: a reworded row with a word of no distractor, or a wrong answer, is rejected
    r = reworded[0]
    oracle, source = texts[r["meta"]["oracle_id"]], texts[r["meta"]["rejected_source_id"]]
    assert check_rag(r, oracle, source, r["meta"]["answer"], TokenCounter(None), 0) is None
    text = r["rejected"][0]["content"]
    foreign = {**r, "rejected": [{"role": "assistant",
                                  "content": text.replace("##begin_quote##", "##begin_quote##Surely ")}]}
    assert check_rag(foreign, oracle, source, r["meta"]["answer"], TokenCounter(None), 0).startswith("reworded quotes")
    wrong = {**r, "rejected": [{"role": "assistant", "content": text.split("<ANSWER>:")[0] + "<ANSWER>: 99"}]}
    assert check_rag(wrong, oracle, source, r["meta"]["answer"], TokenCounter(None), 0) == \
        "reworded answer is not the gold answer"
