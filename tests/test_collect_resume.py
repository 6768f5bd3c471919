"""Resume after a kill -9, shards + merge, and the partial file's repair."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefopt.collect import resume
from prefopt.collect.rag import RagConfig, run
from prefopt.collect.rows import question_id
from prefopt.errors import PrefoptError
from conftest import QUICKSTART, settings
from test_collect_llm import FakeServer

ROOT = Path(__file__).resolve().parent.parent


def _files(out: Path) -> dict:
    card = json.loads((out / "card.json").read_text())
    card.pop("shard", None), card.pop("merged", None)
    return {**{s: (out / f"{s}.jsonl").read_text() for s in ("train", "test", "rejects")}, "card": card}


def _args(out, url):
    llm = settings(out.parent / f"{out.name}-llm.yaml", base_url=url, model="fake", concurrency=1)
    return ["--corpus", str(QUICKSTART / "corpus.jsonl"), "--questions", str(QUICKSTART / "questions.jsonl"),
            "--output-dir", str(out), "--generator", "openai", *llm, "--distractors", "3", "--p", "0.6"]


def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path):
    server = FakeServer(delay=0.01)
    try:
        out = tmp_path / "killed"
        proc = subprocess.Popen([sys.executable, "-m", "prefopt.cli", "collect", "rag", *_args(out, server.url)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        partial = out / resume.PARTIAL
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and not (partial.exists() and partial.stat().st_size):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        assert not (out / "card.json").exists()
        done = len(partial.read_text().splitlines())
        assert 0 < done < 120
        with partial.open("a") as f:  # a line cut short by the kill is dropped on resume
            f.write('{"qid": "half')
        before = server.requests
        from conftest import invoke

        invoke("collect", "rag", *_args(out, server.url))
        resumed = server.requests - before
        assert not partial.exists() and not (out / resume.PARTIAL_META).exists()
        invoke("collect", "rag", *_args(tmp_path / "whole", server.url))
        assert _files(out) == _files(tmp_path / "whole")
        # the killed run's finished questions were not asked again
        assert resumed < server.requests - before - resumed
    finally:
        server.close()


def test_partial_rows_are_skipped_and_other_settings_refused(tmp_path):
    kw = dict(corpus=str(QUICKSTART / "corpus.jsonl"), questions=str(QUICKSTART / "questions.jsonl"), output_dir=str(tmp_path))
    whole = tmp_path / "whole"
    run(RagConfig(**{**kw, "output_dir": str(whole)}))
    # simulate an interruption after 30 questions: their records are in the partial file
    cfg = RagConfig(**kw)
    part = resume.Partial(tmp_path, resume.fingerprint(cfg))
    rows = [json.loads(x) for x in (whole / "train.jsonl").read_text().splitlines()[:30]]
    qids = {}  # row id -> question id
    for i, q in enumerate(json.loads(x) for x in (QUICKSTART / "questions.jsonl").read_text().splitlines()):
        qids[hashlib.sha1(f"{q['doc_id']}\n{q['question']}".encode()).hexdigest()[:16]] = question_id(q, f"q{i}")
    for r in rows:
        part.append("train", qids[r["id"]], r)
    part.f.close()
    with pytest.raises(PrefoptError, match="other settings"):
        run(RagConfig(**{**kw, "seed": 1}))
    card = run(cfg)
    assert card["in"] == 120 and _files(tmp_path) == _files(whole)


def test_shards_and_merge_equal_the_unsharded_run(tmp_path):
    kw = dict(corpus=str(QUICKSTART / "corpus.jsonl"), questions=str(QUICKSTART / "questions.jsonl"), p=0.7)
    run(RagConfig(output_dir=str(tmp_path / "whole"), **kw))
    for i in range(3):
        run(RagConfig(output_dir=str(tmp_path / f"s{i}"), shard=f"{i}/3", **kw))
    from conftest import invoke

    with pytest.raises(AssertionError):  # a missing shard is refused
        invoke("collect", "merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--output-dir", str(tmp_path / "m"))
    invoke("collect", "merge", *(str(tmp_path / f"s{i}") for i in range(3)), "--output-dir", str(tmp_path / "m"))
    assert _files(tmp_path / "m") == _files(tmp_path / "whole")
    # merging the same rows twice finds the duplicates and keeps the counts whole
    for name in ("x", "y"):
        (tmp_path / name).mkdir()
        for f in ("train.jsonl", "dpo.jsonl", "test.jsonl", "rejects.jsonl"):
            (tmp_path / name / f).write_bytes((tmp_path / "s0" / f).read_bytes())
        card = json.loads((tmp_path / "s0" / "card.json").read_text())
        del card["shard"]
        (tmp_path / name / "card.json").write_text(json.dumps(card))
    card = resume.merge(resume.MergeConfig(dirs=[str(tmp_path / "x"), str(tmp_path / "y")], output_dir=str(tmp_path / "d")))
    kept = sum(card["kept"].values())
    assert card["in"] == 80 and card["rejected_by_reason"]["duplicate row id across shards"] == kept > 30
