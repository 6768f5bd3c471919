"""Tests of the experiment code (not run by CI; `pytest experiments/` from the repository root): the corpora and
how rag_outcome.py turns its rows into prefopt commands."""

import dataclasses
import importlib
import shlex
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from corpora import DEFAULT_TYPES, FACT_TYPES, MORE_TYPES, PHRASINGS, make_corpus, type_names  # noqa: E402
from rag_outcome import CONFIG_CLASSES, NOT_FLAGS, parser, split_settings  # noqa: E402

from prefopt.collect.rag import RagConfig, run  # noqa: E402
from prefopt.data import read_jsonl  # noqa: E402
from prefopt.synthetic import make_corpus as quickstart_corpus  # noqa: E402
from prefopt.synthetic import write_jsonl  # noqa: E402

# The flags of each prefopt command (--help); every other setting goes to the --config file.
TRAIN_FLAGS = {"config", "model", "data", "output_dir", "epochs", "max_steps", "batch_size",
               "gradient_accumulation_steps", "learning_rate", "max_length", "seed", "lora_r", "lora_alpha", "full",
               "qlora", "deepspeed", "num_processes", "gradient_checkpointing", "precision", "resume", "save_steps"}
FLAGS = {"sft": TRAIN_FLAGS, "dpo": TRAIN_FLAGS | {"loss", "beta", "ref", "on_policy"},
         "collect": {"config", "corpus", "questions", "output_dir", "out", "retriever", "dense_model", "distractors",
                     "p", "rejected", "dpo_share", "dpo_rejected", "no_oracle", "test_size", "chunk_size",
                     "max_length", "tokenizer", "seed", "generator", "strict", "restart", "shard"}}


def test_plain_corpus_is_prefopt_synthetics():
    for seed in range(3):
        assert make_corpus(60, 2, seed) == quickstart_corpus(60, 2, seed)
        assert make_corpus(9, 3, seed, twins=False) == quickstart_corpus(9, 3, seed, twins=False)


def test_pinned_split_keeps_holdout_fact_types_out_of_train():
    docs, questions = make_corpus(40, 3, seed=2, holdout=("material", "mascot"), test_share=0.3)
    split = {d["id"]: d["split"] for d in docs}
    assert {"train", "test"} == set(split.values())
    assert not {q["fact_type"] for q in questions if split[q["doc_id"]] == "train"} & {"material", "mascot"}
    types = {}
    for q in questions:
        types.setdefault(q["doc_id"], set()).add(q["fact_type"])
    assert all(types[d["id"]] & {"material", "mascot"} for d in docs if d["split"] == "test")
    twins = {}
    for d in docs:
        twins.setdefault(d["group"], set()).add(d["split"])
    assert all(len(s) == 1 for s in twins.values())  # a twin pair never straddles the split


def test_more_fact_types_are_opt_in_and_state_their_answers():
    _, questions = make_corpus(60, 2, seed=3)  # the default corpus keeps its 8 types
    assert {q["fact_type"] for q in questions} <= set(DEFAULT_TYPES)
    docs, questions = make_corpus(60, 2, seed=3, fact_types=type_names(more=True))
    assert {q["fact_type"] for q in questions} & set(MORE_TYPES)
    text = {d["id"]: d["text"] for d in docs}
    assert all(q["answer"] in text[q["doc_id"]] for q in questions)


def test_phrasings_vary_train_sentences_and_keep_test_documents_and_questions(tmp_path):
    kw = dict(entities=80, facts_per_doc=2, seed=5, fact_types=type_names(more=True), holdout=("material",),
              test_share=0.3)
    plain_docs, plain_q = make_corpus(**kw)
    docs, questions = make_corpus(**kw, phrasings=True)
    assert questions == plain_q
    assert [d for d in docs if d["split"] == "test"] == [d for d in plain_docs if d["split"] == "test"]
    doc = {d["id"]: d for d in docs}
    assert all(q["answer"] in doc[q["doc_id"]]["text"] for q in questions)
    train_q = [q for q in questions if doc[q["doc_id"]]["split"] == "train"]
    phrased = sum(any(p.format(name=doc[q["doc_id"]]["title"], v=q["answer"]) in doc[q["doc_id"]]["text"]
                      for p in PHRASINGS[q["fact_type"]]) for q in train_q)
    assert 0.4 * len(train_q) < phrased < 0.9 * len(train_q)  # two phrasings in three are new ones
    shapes = {}  # twins state their facts alike: the same sentences but for the name and the values
    for d in docs:
        shape = d["text"].replace(d["title"], "{name}")
        for q in questions:
            shape = shape.replace(q["answer"], "{v}") if q["doc_id"] == d["id"] else shape
        shapes.setdefault(d["group"], set()).add(shape)
    assert all(len(s) == 1 for s in shapes.values())
    rows = {}  # collect finds a rejected answer about as often as on the plain corpus
    write_jsonl(tmp_path / "questions.jsonl", questions)
    for name, corpus in (("plain", plain_docs), ("phrased", docs)):
        write_jsonl(tmp_path / f"{name}.jsonl", corpus)
        run(RagConfig(corpus=str(tmp_path / f"{name}.jsonl"), questions=str(tmp_path / "questions.jsonl"),
                      output_dir=str(tmp_path / name), distractors=4, retriever="bm25", dpo_share=0.0))
        rows[name] = [r for part in ("train", "test") for r in read_jsonl(tmp_path / name / f"{part}.jsonl")]
    assert len(rows["phrased"]) >= 0.9 * len(rows["plain"]) > 0
    assert FACT_TYPES.keys() == PHRASINGS.keys()


def test_split_settings_moves_what_is_not_a_flag_to_the_config_file(tmp_path):
    flags, settings = split_settings("dpo", shlex.split("--hard-margin 0 --beta 0.3 --on-policy-quotes "
                                                        "--no-on-policy-grounded --sft-weight=16 --lora-r 64"))
    assert flags == ["--beta", "0.3", "--lora-r", "64"]
    assert settings == {"hard_margin": 0.0, "sft_weight": 16.0,
                        "experimental": {"on_policy_quotes": True, "on_policy_grounded": False}}
    (tmp_path / "base.yaml").write_text("report_to: wandb\nhard_margin: 5\n")
    flags, settings = split_settings("sft", ["--config", str(tmp_path / "base.yaml"), "--both-orders", "--epochs",
                                             "1", "--lora-targets", "q_proj,v_proj"])
    assert flags == ["--epochs", "1"]
    assert settings == {"report_to": "wandb", "hard_margin": 5, "experimental": {"both_orders": True},
                        "lora_targets": "q_proj,v_proj"}
    flags, settings = split_settings("collect", shlex.split("--retriever dense --distractors 4 --dpo-order "
                                                            "lookalike-last --template-dir t --strict"))
    assert flags == ["--retriever", "dense", "--distractors", "4", "--strict"]
    assert settings == {"experimental": {"dpo_order": "lookalike-last"}, "template_dir": "t"}


def test_every_sweep_row_parses_and_leaves_only_flags():
    rows = [shlex.split(line) for line in (HERE / "sweep_rows.txt").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    assert len(rows) > 100
    for row in rows:
        a = parser().parse_args(row)  # as rag_sweep.py parses them
        for command, flags in (("collect", a.collect), ("collect", a.dpo_collect), ("sft", a.sft), ("dpo", a.dpo)):
            left, _ = split_settings(command, shlex.split(flags or ""))
            names = {t[2:].partition("=")[0].replace("-", "_") for t in left if t.startswith("--")}
            names = {n[3:] if n.startswith("no_") and n[3:] in FLAGS[command] else n for n in names}
            assert names <= FLAGS[command], (row, command, names - FLAGS[command])


@pytest.mark.parametrize("command", ["collect", "sft", "dpo"])
def test_not_flags_match_prefopt(command):
    module, name = CONFIG_CLASSES[command]
    fields = dataclasses.fields(getattr(importlib.import_module(module), name))
    config_only, experimental = NOT_FLAGS[command]
    assert config_only | experimental | FLAGS[command] >= {f.name for f in fields} - {"out"}
    if not any("config_only" in f.metadata or "experimental" in f.metadata for f in fields):
        pytest.skip("prefopt's config does not mark config-only and experimental settings")
    assert {f.name for f in fields if f.metadata.get("experimental")} == experimental
    assert {f.name for f in fields if f.metadata.get("config_only")} == config_only
