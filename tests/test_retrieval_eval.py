"""`prefopt eval --retrieve K --corpus CORPUS`: recall@K on a hand-made corpus ranked by BM25 (checked by hand),
answer accuracy split by oracle retrieved / not retrieved with a stand-in generator, the prompts rendered by
collect's templates, chunk ids, and the one-line errors of bad input."""

import json

import pytest

from conftest import QUICKSTART, invoke, no_model_load, write_jsonl

# BM25 (bm25s, English stopwords) ranks these for the three questions below as
#   "What colour is Varn lighthouse painted?"  a, b, e, ...   oracle a: first
#   "What does Brin mill grind?"               d, c, e, ...   oracle c: second (d says brin and mill twice)
#   "Who built Tolla bridge?"                  f, b, e, ...   oracle e: third (it shares only "built")
# so recall@1 = 1/3 (a), recall@2 = 2/3 (a, c), recall@3 = 1.
DOCS = [{"id": "a", "text": "Varn lighthouse is painted red."},
        {"id": "b", "text": "Varn lighthouse keeper Olsa crossed Tolla bridge."},
        {"id": "c", "text": "Brin mill grinds barley every autumn."},
        {"id": "d", "text": "Brin mill, the old mill of Brin, grinds wheat."},
        {"id": "e", "text": "The crossing was built of oak by Hemm."},
        {"id": "f", "text": "Tolla bridge toll is paid at Tolla bridge gate."}]
QUESTIONS = [("What colour is Varn lighthouse painted?", "red", "a", "b"),
             ("What does Brin mill grind?", "barley", "c", "d"),
             ("Who built Tolla bridge?", "Hemm", "e", "f")]  # question, gold, oracle, the distractor shown


def held_out_rows() -> list[dict]:
    """Collected-style test rows of QUESTIONS: the oracle and one distractor, rendered with collect's prompt."""
    from prefopt.collect.rows import rag_prompt
    from prefopt.templates import Templates

    by_id, tpl = {d["id"]: d for d in DOCS}, Templates()
    return [{"id": f"q{i}", "prompt": rag_prompt(tpl, q, [by_id[o], by_id[x]]),
             "chosen": [{"role": "assistant", "content": f"<ANSWER>: {gold}"}],
             "rejected": [{"role": "assistant", "content": "<ANSWER>: oak"}],
             "meta": {"source": "rag", "question": q, "answer": gold, "oracle_id": o, "doc_ids": [o, x],
                      "oracle_in_context": True}}
            for i, (q, gold, o, x) in enumerate(QUESTIONS)]


@pytest.fixture
def hand_made(tmp_path):
    """(corpus.jsonl, test.jsonl) of the hand-made corpus."""
    return write_jsonl(tmp_path / "corpus.jsonl", DOCS), write_jsonl(tmp_path / "test.jsonl", held_out_rows())


@pytest.mark.parametrize("k,recall,retrieved", [(1, 1 / 3, [True, False, False]), (2, 2 / 3, [True, True, False]),
                                                 (3, 1.0, [True, True, True])])
def test_recall_at_k_on_a_hand_made_corpus(hand_made, k, recall, retrieved):
    from prefopt.evaluate import EvalConfig
    from prefopt.retrieval_eval import retrieve

    corpus, data = hand_made
    got = retrieve(held_out_rows(), EvalConfig(data=str(data), retrieve=k, corpus=str(corpus), retriever="bm25"))
    assert got.recall == pytest.approx(recall) and [q.oracle_in for q in got.questions] == retrieved
    assert [q.doc_ids for q in got.questions] == [["a", "b", "e"][:k], ["d", "c", "e"][:k], ["f", "b", "e"][:k]]
    assert got.summary()["n_oracle_retrieved"] == sum(retrieved) and got.documents == 6


def test_accuracy_split_by_oracle_retrieved(hand_made, tiny_model, tmp_path, monkeypatch):
    """K=1 retrieves only the first question's oracle. A stand-in model answers the first and third questions
    right and the second wrong, whatever it is shown: accuracy 2/3 with retrieval, 1/1 where the oracle was
    retrieved, 1/2 where it was not."""
    from prefopt import evaluate

    corpus, data = hand_made
    answers = {q: gold if q != QUESTIONS[1][0] else "wheat" for q, gold, _, _ in QUESTIONS}
    prompts = []

    def fake_generate(model, tokenizer, batch, max_new_tokens):
        prompts.append(batch)
        return [f"<ANSWER>: {next(a for q, a in answers.items() if f'Question: {q}' in p)}" for p in batch]

    monkeypatch.setattr(evaluate, "generate", fake_generate)
    out = tmp_path / "eval"
    invoke("eval", "--models", tiny_model, "--data", str(data), "--retrieve", "1", "--corpus", str(corpus),
           "--retriever", "bm25", "--no-scores", "--output-dir", str(out), "--batch-size", "8")
    summary = json.loads((out / "eval.json").read_text())
    m = summary["results"][tiny_model]
    assert m["answer_accuracy"] == pytest.approx(2 / 3)  # the oracle-shown metrics stay as they are
    assert m["recall_at_k"] == pytest.approx(1 / 3) and m["retrieved_answer_accuracy"] == pytest.approx(2 / 3)
    assert m["retrieved_accuracy_oracle_in"] == 1.0 and m["retrieved_accuracy_oracle_out"] == 0.5
    assert m["n_retrieved_questions"] == 3 and m["n_oracle_retrieved"] == 1
    assert summary["retrieval"] == {"k": 1, "retriever": "bm25", "corpus": str(corpus), "documents": 6,
                                    "recall_at_k": pytest.approx(1 / 3), "n_oracle_retrieved": 1, "n_questions": 3}
    table = (out / "eval.md").read_text()
    assert all(f"| {header} |" in table for header in ("recall@k", "ret_answer_acc", "ret_acc_in", "ret_acc_out"))
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [r["mode"] for r in records] == ["oracle"] * 3 + ["retrieved"] * 3
    retrieved = records[3:]
    assert [r["doc_ids"] for r in retrieved] == [["a"], ["d"], ["f"]]
    assert [(r["oracle_retrieved"], r["correct"]) for r in retrieved] == [(True, True), (False, False), (False, True)]
    assert len(prompts) == 2 and "<DOCUMENT>Brin mill, the old mill of Brin, grinds wheat.</DOCUMENT>" in prompts[1][1]
    assert "barley" not in prompts[1][1]  # no oracle forced in


def test_retrieved_prompts_are_collects_prompts(rag_data, tiny_model, monkeypatch):
    """With the collected documents as the 'retrieved' ones, in their order, the prompt with retrieval equals the
    collected prompt: as messages, and as the chat-rendered text the model answers."""
    import prefopt.collect.retrieval
    from prefopt import evaluate
    from prefopt.retrieval_eval import retrieve

    rows = [json.loads(line) for line in (rag_data / "test.jsonl").read_text().splitlines()][:4]
    pos = {json.loads(line)["id"]: i for i, line in enumerate((QUICKSTART / "corpus.jsonl").read_text().splitlines())}
    shown = {r["meta"]["question"]: r["meta"]["doc_ids"] for r in rows}
    k = len(rows[0]["meta"]["doc_ids"])

    def fake_rank(kind, docs, queries, depth, seed=0, dense_model=None):
        assert (kind, depth, dense_model) == ("bm25", k, None)
        return [[pos[i] for i in shown[q]] for q in queries]

    monkeypatch.setattr(prefopt.collect.retrieval, "rank", fake_rank)
    cfg = evaluate.EvalConfig(data="test.jsonl", retrieve=k, corpus="quickstart", retriever="bm25", scores=False)
    got = retrieve(rows, cfg)
    assert [q.row["prompt"] for q in got.questions] == [r["prompt"] for r in rows]
    assert got.recall == 1.0 and got.corpus == str(QUICKSTART / "corpus.jsonl")
    prompts = []
    monkeypatch.setattr(evaluate, "generate", lambda m, t, batch, n: prompts.append(batch) or ["x"] * len(batch))
    evaluate.score_model(tiny_model, rows, cfg, retrieval=got)
    assert len(prompts) == 2 and prompts[0] == prompts[1]  # oracle-shown and retrieved: the same rendered text


def test_a_sentence_transformers_dir_is_the_dense_model(hand_made, tmp_path, monkeypatch):
    import prefopt.collect.retrieval
    from prefopt.evaluate import EvalConfig
    from prefopt.retrieval_eval import retrieve

    corpus, data = hand_made
    seen = []
    monkeypatch.setattr(prefopt.collect.retrieval, "rank",
                        lambda kind, docs, queries, depth, seed=0, dense_model=None:
                        seen.append((kind, dense_model)) or [[0] for _ in queries])
    for retriever in ("dense", "bm25", str(tmp_path)):
        retrieve(held_out_rows(), EvalConfig(data=str(data), retrieve=1, corpus=str(corpus), retriever=retriever))
    assert seen == [("dense", None), ("bm25", None), ("dense", str(tmp_path))]


def test_chunk_ids_follow_collect():
    """d#c{n} is chunk n of document d: a retrieved document shows its chunks, a retrieved chunk stands for its
    document, another chunk of the same document does not show the oracle chunk."""
    from prefopt.retrieval_eval import covers

    assert covers("d", "d") and covers("d", "d#c2") and covers("d#c2", "d") and covers("d#c2", "d#c2")
    assert not covers("d#c1", "d#c2") and not covers("e", "d") and not covers("e#c0", "d#c0")


def test_chunked_oracles_against_whole_documents(hand_made, tmp_path):
    """Rows collected with --chunk-size name chunk oracles (a#c0); retrieving over the whole documents, the
    oracle counts as retrieved when its document is."""
    from prefopt.evaluate import EvalConfig
    from prefopt.retrieval_eval import retrieve

    corpus, data = hand_made
    rows = held_out_rows()
    for r in rows:
        r["meta"]["oracle_id"] += "#c0"
    got = retrieve(rows, EvalConfig(data=str(data), retrieve=2, corpus=str(corpus), retriever="bm25"))
    assert [q.oracle_in for q in got.questions] == [True, True, False]
    chunks = write_jsonl(tmp_path / "chunks.jsonl", [{**d, "id": d["id"] + "#c0"} for d in DOCS])
    got = retrieve(held_out_rows(), EvalConfig(data=str(data), retrieve=2, corpus=str(chunks), retriever="bm25"))
    assert [q.oracle_in for q in got.questions] == [True, True, False]  # whole-document oracles, chunked corpus


@pytest.mark.parametrize("args,needle", [
    ("--retrieve 2", "--retrieve needs --corpus"),
    ("--retrieve 0 --corpus CORPUS", "--retrieve must be >= 1"),
    ("--corpus CORPUS", "--corpus goes with --retrieve K"),
    ("--retrieve 2 --corpus CORPUS --retriever tfidf", "--retriever: 'tfidf' is not dense, bm25 or the directory"),
    ("--retrieve 2 --corpus EMPTY", "empty.jsonl: empty file"),
    ("--retrieve 2 --corpus CORPUS --data NO_ORACLE", "row 2 (id q1): oracle id 'zz' is not in the corpus"),
    ("--retrieve 2 --corpus CORPUS --data NO_QUESTION", "row 3 (id q2) has no meta.question"),
])
def test_bad_input_is_a_one_line_error(hand_made, tmp_path, monkeypatch, args, needle):
    """Each is a single `error:` line and exit code 2, before any model loads."""
    from typer.testing import CliRunner

    from prefopt.cli import app

    no_model_load(monkeypatch)
    corpus, data = hand_made
    rows = held_out_rows()
    rows[1]["meta"]["oracle_id"] = "zz"
    no_question = held_out_rows()
    del no_question[2]["meta"]["question"]
    paths = {"CORPUS": corpus, "EMPTY": write_jsonl(tmp_path / "empty.jsonl", []),
             "NO_ORACLE": write_jsonl(tmp_path / "no_oracle.jsonl", rows),
             "NO_QUESTION": write_jsonl(tmp_path / "no_question.jsonl", no_question)}
    argv = [str(paths.get(a, a)) for a in args.split()]
    argv += [] if "--data" in argv else ["--data", str(data)]
    argv += [] if "--retriever" in argv else ["--retriever", "bm25"]
    result = CliRunner().invoke(app, ["eval", "--models", "smollm2-135m", *argv])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and needle in errors[0], result.output
    assert "Traceback" not in result.output
