"""Tests of the generality harness (not run by CI; `python -m pytest experiments/test_harness.py` from the repository
root): the field-guide corpus, that prefopt takes its files, the harness's figures on hand-made evals, its
commands, and (`-m slow`) the whole harness on a tiny random model."""

import ast
import json
import re
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpora  # noqa: E402
import fieldguide  # noqa: E402
import harness  # noqa: E402
from fieldguide import FACTS, FILLERS, HOLDOUT, KINDS, make_corpus, twin_meta, write_corpus  # noqa: E402

from prefopt import synthetic  # noqa: E402


def by_group(docs):
    groups = {}
    for d in docs:
        groups.setdefault(d["group"], []).append(d)
    return groups


def sentences(text):
    return re.split(r"(?<=[.!?])\s+", text)


def test_deterministic_per_seed():
    assert make_corpus(60, seed=4) == make_corpus(60, seed=4)
    assert make_corpus(60, seed=4) != make_corpus(60, seed=5)


def test_twins_differ_in_exactly_one_syllable_and_in_every_value():
    docs, questions = make_corpus(200, seed=1)
    answers = {}
    for q in questions:
        answers.setdefault(q["doc_id"], {})[q["fact_type"]] = q["answer"]
    groups = by_group(docs)
    assert len(groups) == 100 and all(len(g) == 2 for g in groups.values())
    for a, b in groups.values():
        (name_a, kind_a), (name_b, kind_b) = a["title"].split(" "), b["title"].split(" ")
        assert kind_a == kind_b == a["kind"] == b["kind"] and a["split"] == b["split"]
        syl_a = [name_a.lower()[i:i + 2] for i in range(0, len(name_a), 2)]
        syl_b = [name_b.lower()[i:i + 2] for i in range(0, len(name_b), 2)]
        assert len(syl_a) == len(syl_b) == 3 and all(s in fieldguide.SYLLABLES for s in syl_a + syl_b)
        assert sum(x != y for x, y in zip(syl_a, syl_b)) == 1
        assert answers[a["id"]].keys() == answers[b["id"]].keys()  # the same fact types, other values
        assert all(answers[a["id"]][t] != answers[b["id"]][t] for t in answers[a["id"]])
        def shapes(d):  # its fact sentences with the name and the values left out
            fillers = {f.format(name=d["title"]) for f in FILLERS} | {f[0].upper() + f[1:] for f in
                                                                      (f.format(name=d["title"]) for f in FILLERS)}
            facts = [s for s in sentences(d["text"]) if s not in fillers]
            for v in answers[d["id"]].values():
                facts = [re.sub(rf"\b{re.escape(v)}\b", "{v}", s) for s in facts]
            return sorted(s.replace(d["title"], "{name}") for s in facts)

        assert shapes(a) == shapes(b)  # each fact stated with the same template in both twins


def test_documents_have_3_to_5_fillers_that_hold_no_fact():
    docs, questions = make_corpus(120, seed=2)
    facts = {}
    for q in questions:
        facts.setdefault(q["doc_id"], []).append(q["answer"])
    value_words = {w for ws in fieldguide.WORDS.values() for v in ws for w in v.split()} | \
        {w.lower() for w in fieldguide.LANDFORMS}
    counts = set()
    for d in docs:
        fillers = {f.format(name=d["title"]) for f in FILLERS}
        fillers |= {f[0].upper() + f[1:] for f in fillers}
        parts = sentences(d["text"])
        filler = [s for s in parts if s in fillers]
        counts.add(len(filler))
        assert len(parts) == len(filler) + len(facts[d["id"]])
        for s in filler:
            assert not re.search(r"\d", s) and not set(re.findall(r"[a-z]+", s.lower())) & value_words
        for answer in facts[d["id"]]:  # each fact sentence holds its value exactly once in the document
            assert sum(bool(re.search(rf"\b{re.escape(answer)}\b", s)) for s in parts) == 1
    assert counts == {3, 4, 5}


def test_held_out_fact_types_occur_only_in_test_documents():
    docs, questions = make_corpus(260, seed=3)
    split = {d["id"]: d["split"] for d in docs}
    assert {"train", "test"} == set(split.values())
    assert 0.15 < sum(s == "test" for s in split.values()) / len(docs) < 0.35
    types = {}
    for q in questions:
        types.setdefault(q["doc_id"], set()).add(q["fact_type"])
        if q["fact_type"] in HOLDOUT:
            assert split[q["doc_id"]] == "test"
    assert all(types[d] & set(HOLDOUT) for d, s in split.items() if s == "test")
    assert all(len({d["split"] for d in g}) == 1 for g in by_group(docs).values())
    assert len(FACTS) >= 10 and len(HOLDOUT) == 2


def literal_pieces(template: str) -> list[str]:
    """The literal runs of words of a template between its placeholders, of at least 2 words."""
    pieces = (" ".join(re.findall(r"[a-z]+", p.lower())) for p in re.split(r"\{\w+\}", template))
    return [p for p in pieces if len(p.split()) >= 2]


def test_shares_no_code_names_fact_types_or_templates_with_prefopt_synthetic():
    source = (HERE / "fieldguide.py").read_text()
    imported = {n.module if isinstance(n, ast.ImportFrom) else a.name for n in ast.walk(ast.parse(source))
                if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert not {m for m in imported if m and ("synthetic" in m or "corpora" in m or m.startswith("prefopt"))}
    theirs = {**synthetic.FACT_TYPES, **corpora.FACT_TYPES}
    assert not set(FACTS) & set(theirs)
    assert not set(KINDS) & set(synthetic.KINDS)
    their_templates = [t for sentence, question, _ in theirs.values() for t in (sentence, question)]
    their_templates += [p for ps in corpora.PHRASINGS.values() for p in ps]
    mine = [t for question, templates, _ in FACTS.values() for t in (question, *templates)] + FILLERS
    mine_text = " | ".join(" ".join(re.findall(r"[a-z]+", t.lower())) for t in mine)
    shared = [p for t in their_templates for p in literal_pieces(t) if re.search(rf"\b{p}\b", mine_text)]
    assert not shared
    for seed in range(3):  # no entity name in common
        their_names = {d["title"] for d in synthetic.make_corpus(260, 2, seed)[0]}
        assert not their_names & {d["title"] for d in make_corpus(260, seed=seed)[0]}


def test_question_meta_names_each_twin_and_its_value(tmp_path):
    docs, questions = make_corpus(40, seed=0)
    write_corpus(tmp_path, docs, questions, HOLDOUT)
    meta = [json.loads(line) for line in (tmp_path / "question_meta.jsonl").read_text().splitlines()]
    answer = {(q["doc_id"], q["fact_type"]): q["answer"] for q in questions}
    group = {d["id"]: d["group"] for d in docs}
    assert len(meta) == len(questions) and len({m["qid"] for m in meta}) == len(meta)
    for m in meta:
        assert m["twin_doc_id"] != m["doc_id"] and group[m["twin_doc_id"]] == group[m["doc_id"]]
        assert m["twin_value"] == answer[(m["twin_doc_id"], m["fact_type"])] != answer[(m["doc_id"], m["fact_type"])]
        assert m["unseen"] == (m["fact_type"] in HOLDOUT)
    alone = twin_meta(docs[:1], [q for q in questions if q["doc_id"] == docs[0]["id"]], HOLDOUT)
    assert all(m["twin_doc_id"] is None and m["twin_value"] is None for m in alone)


def invoke(*args):
    from typer.testing import CliRunner

    from prefopt.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.mark.parametrize("corpus", ["fieldguide", "synthetic"])
def test_prefopt_validates_and_collects_the_harness_inputs(tmp_path, corpus):
    a = harness.parser().parse_args(["--entities", "120", "--train-questions", "40", "--test-questions", "10"])
    inputs = tmp_path / "inputs"
    harness.write_inputs(corpus, 1, a, inputs)
    invoke("validate", inputs / "corpus.jsonl", "--format", "corpus", "--strict")
    invoke("validate", inputs / "questions.jsonl", "--format", "questions", "--strict")
    meta = {m["qid"]: m for m in harness.read_jsonl(inputs / "question_meta.jsonl")}
    questions = harness.read_jsonl(inputs / "questions.jsonl")
    assert len(questions) == 60 and set(meta) == {q["qid"] for q in questions}
    assert sum(meta[q["qid"]]["unseen"] for q in questions) == 10
    invoke("collect", "rag", "--corpus", inputs / "corpus.jsonl", "--questions", inputs / "questions.jsonl",
           "--output-dir", tmp_path / "data", "--seed", "1")
    card = json.loads((tmp_path / "data" / "card.json").read_text())
    rows = {s: harness.read_jsonl(tmp_path / "data" / f"{s}.jsonl") for s in ("train", "dpo", "test")}
    rejects = harness.read_jsonl(tmp_path / "data" / "rejects.jsonl")
    assert sum(map(len, rows.values())) + len(rejects) == 60 and len(rejects) <= 6, card
    split = {d["id"]: d["split"] for d in harness.read_jsonl(inputs / "corpus.jsonl")}
    assert all(split[r["meta"]["oracle_id"]] == "test" and r["meta"]["qid"] in meta for r in rows["test"])
    for r in rows["train"] + rows["dpo"]:  # the split collect honoured: held-out types never in training rows
        assert split[r["meta"]["oracle_id"]] == "train" and not meta[r["meta"]["qid"]]["unseen"]
        assert all(split[i] == "train" for i in r["meta"]["doc_ids"])


# ---- the figures, on hand-made evals ------------------------------------------------------------------------

def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_run(run: Path, models: dict, answers: dict) -> None:
    """A run dir with 4 test questions (q1, q2 unseen; q3, q4 seen; the twin shown in all but q4's prompt) and
    `answers`: model key -> per question (final answer, correct, quotes, quotes in the oracle)."""
    meta = [{"qid": f"q{i}", "doc_id": f"d{i}", "fact_type": "t", "unseen": i <= 2, "twin_doc_id": f"t{i}",
             "twin_value": f"twin{i}"} for i in range(1, 5)]
    write_rows(run / "inputs" / "question_meta.jsonl", meta)
    write_rows(run / "data" / "test.jsonl", [{"id": f"r{i}", "meta": {"qid": f"q{i}", "doc_ids": [f"d{i}", "x"] +
                                                                      ([f"t{i}"] if i != 4 else [])}}
                                             for i in range(1, 5)])
    write_rows(run / "eval" / "generations.jsonl", [
        {"model": models[key], "id": f"r{i}", "final_answer": fa, "correct": ok, "quotes": nq, "quotes_in_oracle": good}
        for key, rows in answers.items() for i, (fa, ok, nq, good) in enumerate(rows, 1)])


def test_figures_of_hand_made_evals(tmp_path, capsys):
    a = harness.parser().parse_args(["--out", str(tmp_path), "--corpora", "fieldguide", "--seeds", "0", "1",
                                     "--report-only"])
    right = ("gold", True, 1, 1)
    for seed, dpo in ((0, [right, ("the twin2 value", False, 1, 0), right, ("twin4", False, 2, 1)]),
                      (1, [right, right, ("Twin3", False, 2, 1), right])):
        run = harness.run_dir(tmp_path, "fieldguide", seed)
        base = [("twin1", False, 0, 0), ("nothing", False, 0, 0), ("twin3", False, 0, 0), right]
        fake_run(run, harness.model_names(a, run), {"base": base, "sft": [right] * 4, "dpo": dpo})
    result = harness.report(a)
    runs = result["runs"]["fieldguide"]
    # seed 0, DPO: unseen 1/2, seen 1/2; quotes 3 good of 5; the twin's value in q2's wrong answer (q4's twin is
    # not shown, so its "twin4" is no twin error)
    assert runs[0]["dpo"] == {"n": 4, "accuracy": 0.5, "quote_precision": 0.6, "unseen_accuracy": 0.5, "n_unseen": 2,
                              "seen_accuracy": 0.5, "n_seen": 2, "twin_errors": 1, "twin_shown": 3}
    assert runs[1]["dpo"]["unseen_accuracy"] == 1.0 and runs[1]["dpo"]["twin_errors"] == 1  # "Twin3": case ignored
    assert runs[0]["base"]["twin_errors"] == runs[1]["base"]["twin_errors"] == 2
    dpo = result["corpora"]["fieldguide"]["dpo"]
    assert dpo["unseen_accuracy"] == {"mean": 0.75, "min": 0.5, "max": 1.0, "std": 0.3536, "n": 2}
    assert dpo["seen_accuracy"]["mean"] == 0.5 and dpo["twin_errors"]["mean"] == 1
    assert dpo["quote_precision"] == {"mean": 0.7, "min": 0.6, "max": 0.8, "std": 0.1414, "n": 2}  # 3/5, 4/5
    assert result["overall"]["dpo"]["mean"] == 0.75 and result["overall"]["base"]["mean"] == 0.0
    table = capsys.readouterr().out
    assert "| fieldguide | dpo | 0,1 | 75.0 (50.0–100.0) | 50.0 (50.0–50.0) | - | 0.70 (0.60–0.80) | 1 (1–1) / 3 (3–3) |" \
        in table
    assert json.loads((tmp_path / "harness.json").read_text())["overall"]["sft"]["mean"] == 1.0


def test_pubmedqa_figures_and_majority_baseline(tmp_path):
    run = tmp_path / "pubmedqa" / "seed0"
    labels = ["yes", "yes", "no", "maybe"]
    write_rows(run / "data" / "test.jsonl", [{"id": f"r{i}", "meta": {"final_decision": d, "doc_ids": ["p"]}}
                                             for i, d in enumerate(labels)])
    said = {"base": ["yes", "yes", "yes", "yes"], "sft": ["yes", "no", "no", None], "dpo": ["yes", "yes", "no", "no"]}
    names = {"base": "B", "sft": "S", "dpo": "P"}
    write_rows(run / "eval" / "generations.jsonl", [
        {"model": names[k], "id": f"r{i}", "final_answer": p or "", "correct": p == d, "quotes": 1,
         "quotes_in_oracle": 1, "decision": d, "predicted_decision": p}
        for k, ps in said.items() for i, (p, d) in enumerate(zip(ps, labels))])
    scores = harness.run_scores(run, names)
    assert scores["majority"] == {"yesno_accuracy": 0.5}
    assert [scores[k]["yesno_accuracy"] for k in ("base", "sft", "dpo")] == [0.5, 0.5, 0.75]
    assert "unseen_accuracy" not in scores["dpo"] and harness.headline(scores["dpo"]) == 0.75
    summary = harness.summarize({"pubmedqa": {0: scores}})
    assert "always \"yes\" | 0 | - | - | 50.0" in harness.markdown({"pubmedqa": {0: scores}}, summary)


# ---- the commands ------------------------------------------------------------------------------------------

def test_dry_run_prints_the_user_path_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "h"
    assert harness.main(["--out", str(out), "--dry-run", "--seeds", "0", "1", "--dpo", "--beta 0.3 --hard-margin 0",
                         "--eval=--no-scores"]) == 0
    err = capsys.readouterr().err
    assert not out.exists()
    commands = [line.split(": ", 1)[1] for line in err.splitlines() if ": prefopt " in line]
    assert len(commands) == 3 * 2 * 4
    run = out / "fieldguide" / "seed1"
    assert commands[4 * 3:4 * 4] == [
        (f"prefopt collect rag --corpus {run}/inputs/corpus.jsonl --questions {run}/inputs/questions.jsonl "
         f"--output-dir {run}/data --seed 1"),
        f"prefopt sft --model smollm2-135m --data {run}/data/train.jsonl --output-dir {run}/sft",
        f"prefopt dpo --model {run}/sft --output-dir {run}/dpo --config {run}/dpo/settings.yaml --beta 0.3",
        (f"prefopt eval --models smollm2-135m {run}/sft {run}/dpo --data {run}/data/test.jsonl --output-dir "
         f"{run}/eval --no-scores")]
    assert "hard_margin: 0.0" in err


def test_one_out_holds_one_set_of_flags(tmp_path):
    (tmp_path / "flags.json").write_text(json.dumps(harness.settings(harness.parser().parse_args([]))))
    with pytest.raises(SystemExit, match="use another --out"):
        harness.main(["--out", str(tmp_path), "--dry-run", "--dpo", "--beta 0.3"])


@pytest.mark.slow
def test_harness_end_to_end_on_a_tiny_model(tmp_path, capsys):
    """The whole path on a tiny random Llama (about a minute on 2 CPU cores); a second call resumes: runs nothing."""
    from prefopt.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny")
    argv = ["--out", str(tmp_path / "h"), "--corpora", "fieldguide", "--seeds", "0", "--model", model,
            "--entities", "24", "--train-questions", "16", "--test-questions", "4",
            "--collect", "--distractors 1",  # 2 documents a prompt: the tiny tokenizer splits these words finely
            "--sft", "--max-steps 2", "--dpo", "--max-steps 2 --on-policy 0", "--eval", "--no-scores --max-new-tokens 8"]
    assert harness.main(argv) == 0
    result = json.loads((tmp_path / "h" / "harness.json").read_text())
    run = result["runs"]["fieldguide"]["0"]
    assert run["dpo"]["n"] == run["base"]["n"] > 0 and run["dpo"]["n_unseen"] > 0
    assert set(result["overall"]) == {"base", "sft", "dpo"}
    capsys.readouterr()
    assert harness.main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("already done") == 4 and ": prefopt " not in err
