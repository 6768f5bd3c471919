"""prefopt retriever (LSR): the targets, a training step, the command end to end, its one-line errors."""

import json

import pytest
from typer.testing import CliRunner

from conftest import good_row, invoke, write_jsonl
from prefopt.cli import app
from prefopt.retriever import Question, RetrieverConfig, agreement, lm_scores, lsr_targets, read_questions

DOCS = [
    {"id": "a", "text": "The mascot of Vorlin College is an otter."},
    {"id": "b", "text": "The mascot of Vorlan College is a heron."},
    {"id": "c", "text": "Vorlin College was founded in 1802 by Tessa Quill."},
    {"id": "d", "text": "The main hall of Brask Museum is built of basalt."},
    {"id": "e", "text": "Brask Museum has exactly 41 rooms."},
    {"id": "f", "text": "The river Omble flows north through the valley."},
]
QUESTIONS = [
    {"question": "What is the mascot of Vorlin College?", "answer": "an otter", "doc_id": "a"},
    {"question": "What is the main hall of Brask Museum built of?", "answer": "basalt", "doc_id": "d"},
    {"question": "How many rooms does Brask Museum have?", "answer": "41", "doc_id": "e"},
]


@pytest.fixture
def inputs(tmp_path):
    return write_jsonl(tmp_path / "corpus.jsonl", DOCS), write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)


def test_the_target_puts_the_mass_where_the_answer_is_likely():
    target = lsr_targets([-2.0, -14.0, -15.5, -13.0], tau=1.0)
    assert abs(sum(target) - 1) < 1e-12 and target[0] > 0.99
    softer = lsr_targets([-2.0, -14.0, -15.5, -13.0], tau=10.0)
    assert 0.3 < softer[0] < 0.99 and softer[0] == max(softer)  # τ flattens it, the order stays
    assert lsr_targets([-5.0, -5.0], tau=1.0) == [0.5, 0.5]
    assert lsr_targets([-1e4, -1e4 - 3], tau=0.01)[0] == 1.0  # no overflow on large log-probs


def test_a_stand_in_lm_scores_every_candidate_of_every_question_once():
    """Candidates of several questions share a batch; each log-prob lands on its own question and candidate."""
    seen = []

    def scorer(prompts, completions):  # the answer is far more likely when the prompt's document holds it
        seen.append(len(prompts))
        return [0.0 if c in p else -12.0 for p, c in zip(prompts, completions)]

    questions = [Question(f"q{i}", q["question"], q["answer"], "ade".index(q["doc_id"]), candidates=list(range(6)))
                 for i, q in enumerate(QUESTIONS)]
    cost = lm_scores(questions, DOCS, lambda q, d: f"{q}\n{d['text']}", scorer, batch_size=4)
    assert seen == [4, 4, 4, 4, 2] and cost["forward_passes"] == 18 and cost["batches"] == 5
    for q, gold in zip(questions, "ade"):
        target = lsr_targets(q.logps, 1.0)
        assert target["abcdef".index(gold)] > 0.99, (q.question, target)


def test_a_training_step_moves_the_scores_towards_the_candidate_the_lm_prefers(tmp_path):
    from prefopt import lsr
    from prefopt.collect.retrieval import dense_model_path

    base = dense_model_path()
    query = "What is the mascot of Vorlin College?"
    cands = [DOCS[1]["text"], DOCS[2]["text"], DOCS[0]["text"]]  # the LM prefers the last one
    examples = [(query, cands, [-20.0, -20.0, -1.0]), ("Which animal is the Vorlin College mascot?", cands,
                                                       [-20.0, -20.0, -1.0])]
    before = lsr.scores(lsr.load(base), [query], [cands])[0]
    cfg = RetrieverConfig(corpus="unused", learning_rate=1e-4, epochs=2, batch_size=2)
    model, fit = lsr.train(base, examples, cfg, tmp_path, lambda cos, lp: agreement(cos, lp, cfg.tau, cfg.temperature))
    after = lsr.scores(model, [query], [cands])[0]
    assert after[2] - max(after[:2]) > before[2] - max(before[:2]) + 0.01, (before, after)
    assert fit["steps"] == 2 and fit["kl_after"] < fit["kl_before"] and fit["top_mass_after"] > fit["top_mass_before"]


def test_the_command_end_to_end(tiny_model, inputs, tmp_path):
    from sentence_transformers import SentenceTransformer

    from prefopt.collect.retrieval import rank

    corpus, questions = inputs
    out = tmp_path / "run"
    invoke("retriever", "--model", tiny_model, "--corpus", str(corpus), "--questions", str(questions),
           "--output-dir", str(out), "--candidates", "2", "--epochs", "1", "--batch-size", "2", "--lm-batch-size", "4")
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "retriever" and run["questions"] == 3 and run["candidates"] == 3
    assert {"torch", "transformers", "sentence_transformers"} <= set(run["versions"])
    assert (out / "config.yaml").is_file() and (out / "modules.json").is_file()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lm = metrics[0]
    assert lm["phase"] == "lm_scoring" and lm["forward_passes"] == 9 and lm["forward_passes_per_s"] > 0
    assert any("loss" in m for m in metrics) and metrics[-1]["phase"] == "retriever"
    targets = [json.loads(line) for line in (out / "targets.jsonl").read_text().splitlines()]
    assert [t["id"] for t in targets] == ["q1", "q2", "q3"]
    for t, q in zip(targets, QUESTIONS):
        assert q["doc_id"] in t["candidate_ids"] and len(t["candidate_ids"]) == len(t["lm_logps"]) == 3
        assert abs(sum(t["target"]) - 1) < 1e-9
    assert SentenceTransformer(str(out), device="cpu").encode(["a question"]).shape == (1, 384)
    ranked = rank("dense", DOCS, [q["question"] for q in QUESTIONS], 2, dense_model=str(out))
    assert [len(r) for r in ranked] == [2, 2, 2]


def test_collect_rows_are_questions_too(tmp_path):
    rows = [{**good_row(1), "meta": {"question": "What is the mascot of Vorlin College?", "answer": "an otter",
                                     "oracle_id": "a"}}]
    got = read_questions(str(write_jsonl(tmp_path / "train.jsonl", rows)))
    assert [(g["id"], g["question"], g["answer"], g["oracle_id"]) for g in got] == \
        [("r1", "What is the mascot of Vorlin College?", "an otter", "a")]


@pytest.mark.parametrize("case, needle", [
    ("unknown doc", "questions.jsonl:2: doc id 'zzz' is not in the corpus"),
    ("empty corpus", "corpus.jsonl: empty file"),
    ("empty questions", "questions.jsonl: empty file"),
    ("K 0", "--candidates must be >= 1"),
    ("tau 0", "--tau must be > 0"),
    ("tau negative", "--tau must be > 0"),
    ("one document", "the corpus has one document"),
])
def test_bad_input_is_one_line_and_exit_2(case, needle, inputs, tmp_path):
    corpus, questions = inputs
    extra = {"K 0": ["--candidates", "0"], "tau 0": ["--tau", "0"], "tau negative": ["--tau", "-1"]}.get(case, [])
    if case == "unknown doc":
        write_jsonl(questions, [QUESTIONS[0], {**QUESTIONS[1], "doc_id": "zzz"}])
    elif case == "empty corpus":
        corpus.write_text("")
    elif case == "empty questions":
        questions.write_text("")
    elif case == "one document":
        write_jsonl(corpus, DOCS[:1])
        write_jsonl(questions, QUESTIONS[:1])
    result = CliRunner().invoke(app, ["retriever", "--model", "/no/such/model", "--corpus", str(corpus),
                                      "--questions", str(questions), "--output-dir", str(tmp_path / "out"), *extra])
    assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) <= 3  # the counts of the files read, then the error
    assert not (tmp_path / "out").exists()  # refused before anything is written
