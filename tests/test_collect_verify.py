"""Verification rules, duplicates, the data card, corpus folders and chunking, long answers."""

import json
import shutil

from prefopt.collect import quality, verify
from prefopt.collect.corpus import chunk, html_text, load_corpus
from prefopt.collect.rag import RagConfig, run
from prefopt.data import read_jsonl
from prefopt.raft import final_answer, quote_spans
from conftest import QUICKSTART

ORACLE = "The main hall of Zalkloth Orchestra is built of slate. It has 528 members. Both halls are famous."
SOURCE = "The main hall of Mishdroun Orchestra is built of marble. It has 300 members. Both halls are famous."


def _row(chosen: str, rejected: str, in_context: bool = True) -> dict:
    return {"prompt": [{"role": "user", "content": "What is the main hall of Zalkloth Orchestra built of?"}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "meta": {"oracle_in_context": in_context}}


def _ans(quote: str, answer: str) -> str:
    return f"##Reason: The document says ##begin_quote##{quote}##end_quote## <ANSWER>: {answer}"


def test_each_verification_rule():
    counter = verify.TokenCounter()
    good_c = _ans("The main hall of Zalkloth Orchestra is built of slate.", "slate")
    good_r = _ans("The main hall of Mishdroun Orchestra is built of marble.", "marble")
    check = lambda row, max_length=0: verify.check_rag(row, ORACLE, SOURCE, "slate", counter, max_length)  # noqa: E731
    assert check(_row(good_c, good_r)) is None
    # whitespace and surrounding quotation marks do not matter; changed words do
    assert check(_row(_ans('\n"The main hall of Zalkloth   Orchestra\nis built of slate."\n', "slate"), good_r)) is None
    cases = {
        "chosen quote not found verbatim in the oracle": _row(_ans("The hall is built of slate.", "slate"), good_r),
        "chosen quotes nothing from the oracle": _row("##Reason: I know it. <ANSWER>: slate", good_r),
        "rejected quote not found in its source distractor": _row(good_c, _ans("Made of marble.", "marble")),
        "rejected quote appears in the oracle": _row(good_c, _ans("Both halls are famous.", "marble")),
        "rejected quotes nothing": _row(good_c, "##Reason: guess <ANSWER>: marble"),
        "rejected answer equals the gold answer": _row(good_c, _ans("It has 300 members.", "Slate")),
        "chosen == rejected": _row(good_r, good_r),
    }
    for reason, row in cases.items():
        assert check(row) == reason, reason
    assert check(_row(good_c, good_r), max_length=20).startswith("longer than --max-length")
    # no quote is needed when the oracle is not shown (abstain / memory answers)
    assert check(_row("##Reason: None of the documents answers. <ANSWER>: unknown", good_r, in_context=False)) is None
    assert verify.found("Orchestra IS built of slate", ORACLE, "words") and not verify.found("Orchestra IS built of slate", ORACLE)


def test_token_proxy_and_dedup():
    assert verify.TokenCounter().text("Hello, world! It's 4.5") == 10  # Hello , world ! It ' s 4 . 5
    d = quality.Dedup(0.8)
    assert d.seen("What is the capital of France today?", "a") is None
    assert d.seen("what is the CAPITAL of france, today", "b").startswith("exact duplicate of a")
    text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
    assert d.seen(text, "c") is None
    assert d.seen(text + " seventeen", "d").startswith("near duplicate of c")
    assert d.seen("a completely different question about rivers", "e") is None
    assert quality.histogram([1, 2, 3, 10]) and sum(b["n"] for b in quality.histogram([1, 2, 3, 10])) == 4


def test_rag_rejects_duplicates_and_long_rows_and_writes_a_card(tmp_path):
    qs = list(read_jsonl(QUICKSTART / "questions.jsonl"))
    qs.append(dict(qs[0]))  # an exact duplicate
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    card = run(RagConfig(corpus=str(QUICKSTART / "corpus.jsonl"), questions=str(tmp_path / "q.jsonl"),
                         output_dir=str(tmp_path / "o"), distractors=3, max_length=190, seed=2))
    rejects = list(read_jsonl(tmp_path / "o" / "rejects.jsonl"))
    kept = sum(card["kept"].values())
    assert card["in"] == 121 == kept + len(rejects)
    assert card["rejected_by_reason"]["exact duplicate"] == 1
    assert any(r["reason"].startswith("longer than --max-length") for r in rejects) and kept > 0
    counter = verify.TokenCounter()
    for split in ("train", "dpo", "test"):
        for row in read_jsonl(tmp_path / "o" / f"{split}.jsonl"):
            assert max(counter.pair(row)) <= 190
    md = (tmp_path / "o" / "card.md").read_text()
    assert "exact duplicate" in md and "## Token lengths: train" in md and "oracle_rate_train" in md
    assert set(card["templates"]) >= {"answer.j2", "rag_prompt.j2"} and card["distractor_source"].startswith("dense")


def test_html_text_and_chunk_ids():
    title, text = html_text("<html><head><title>T</title><style>x{}</style></head><body><p>One &amp; two.</p>"
                            "<script>var a;</script><p>Three.</p></body></html>")
    assert title == "T" and text == "One & two.\nThree."
    doc = {"id": "a.txt", "text": " ".join(f"w{i}" for i in range(10))}
    chunks = chunk(doc, 4, 1)
    assert [c["id"] for c in chunks] == ["a.txt#c0", "a.txt#c1", "a.txt#c2"]
    assert [c["text"] for c in chunks] == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert {c["group"] for c in chunks} == {"a.txt"} and chunk(doc, 4, 1) == chunks


def test_folder_corpus_with_chunks(tmp_path):
    docs = list(read_jsonl(QUICKSTART / "corpus.jsonl"))
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    for i, d in enumerate(docs):
        filler = " ".join(["Nothing else is recorded here."] * 3)
        body = f"{d['text']} {filler}"
        if i % 3 == 0:
            (folder / f"{d['id']}.txt").write_text(body)
        elif i % 3 == 1:
            (folder / "sub" / f"{d['id']}.md").write_text(f"# {d['title']}\n\n{body}")
        else:
            (folder / f"{d['id']}.html").write_text(f"<html><body><p>{body}</p><script>x()</script></body></html>")
    shutil.copy(QUICKSTART / "questions.jsonl", tmp_path / "q.jsonl")
    loaded = load_corpus(str(folder), chunk_size=12, chunk_overlap=2)
    assert all("#c" in d["id"] for d in loaded) and not any("x()" in d["text"] for d in loaded)
    # questions name the files' documents ("doc0000"); the oracle becomes the chunk holding the answer
    ids = {d["id"].split("/")[-1].rsplit(".", 1)[0]: d["id"] for d in load_corpus(str(folder))}
    qs = [dict(q, doc_id=ids[q["doc_id"]]) for q in read_jsonl(QUICKSTART / "questions.jsonl")]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    card = run(RagConfig(corpus=str(folder), questions=str(tmp_path / "q.jsonl"), output_dir=str(tmp_path / "o"),
                         distractors=2, chunk_size=12, chunk_overlap=2, seed=0, dpo_share=0.0))
    train = list(read_jsonl(tmp_path / "o" / "train.jsonl"))
    test = list(read_jsonl(tmp_path / "o" / "test.jsonl"))
    assert card["in"] == len(train) + len(test) + card["rejected"] and len(train) > 40
    by_id = {d["id"]: d for d in loaded}
    for row in train + test:
        assert "#c" in row["meta"]["oracle_id"] and row["meta"]["answer"].lower() in by_id[row["meta"]["oracle_id"]]["text"].lower()
    group = lambda rows: {i.split("#c")[0] for r in rows for i in r["meta"]["doc_ids"]}  # noqa: E731
    assert not group(train) & group(test)


def test_long_answers_quote_the_span(tmp_path):
    """PubMedQA-style: the gold answer is a conclusion of several sentences; the rejected answer is a
    distractor's own best-matching sentence."""
    topics = ["aspirin", "statins", "insulin", "caffeine", "exercise", "sleep"]
    docs, qs = [], []
    for i, t in enumerate(topics):
        concl = f"{t.title()} use was linked to fewer events in trial {i}. More work on {t} is needed."
        docs.append({"id": f"p{i}", "text": f"We studied {t} in adults with heart disease. {concl}"})
        qs.append({"question": f"Does {t} reduce events in adults with heart disease?", "answer": concl,
                   "doc_id": f"p{i}", "final_decision": "yes"})
    for name, rows in (("c.jsonl", docs), ("q.jsonl", qs)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    card = run(RagConfig(corpus=str(tmp_path / "c.jsonl"), questions=str(tmp_path / "q.jsonl"), output_dir=str(tmp_path / "o"),
                         distractors=2, p=1.0, test_size=0.0, near_dup=0.0, dpo_share=0.0))
    rows = list(read_jsonl(tmp_path / "o" / "train.jsonl"))
    assert card["kept"]["train"] == len(rows) == 6
    for r in rows:
        assert quote_spans(r["chosen"][0]["content"]) == [r["meta"]["answer"]]
        assert r["meta"]["final_decision"] == "yes"
        assert final_answer(r["rejected"][0]["content"]) in quote_spans(r["rejected"][0]["content"])[0]


def _pdf(text: str) -> bytes:
    """A one-page PDF with `text` in Helvetica, written by hand (no PDF writer needed)."""
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            "/Resources << /Font << /F1 5 0 R >> >> >>", None, "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    out, offsets = b"%PDF-1.4\n", []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        body = f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream" if o is None else o.encode()
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    return out + f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()


def test_pdf_folder(tmp_path):
    import pytest

    pytest.importorskip("pypdf")
    (tmp_path / "a.pdf").write_bytes(_pdf("The main hall is built of slate."))
    (tmp_path / "b.txt").write_text("The side hall is built of oak.")
    docs = load_corpus(str(tmp_path))
    assert [(d["id"], d["text"]) for d in docs] == [("a.pdf", "The main hall is built of slate."),
                                                    ("b.txt", "The side hall is built of oak.")]


def test_tokenizer_counts_and_token_chunks(tiny_model):
    counter = verify.TokenCounter(tiny_model)
    row = _row(_ans("The main hall of Zalkloth Orchestra is built of slate.", "slate"), "x")
    expected = len(counter.tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=True, return_dict=True)["input_ids"])
    assert counter.pair(row)[0] == expected and counter.name == tiny_model
    doc = {"id": "d", "text": ORACLE}
    chunks = chunk(doc, 8, 2, counter.tok)
    assert len(chunks) > 1 and chunks[0]["id"] == "d#c0" and ORACLE.startswith(chunks[0]["text"])
