"""`prefopt collect import`: each format, rejects with reasons, and in = kept + rejected."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefopt.cli import app
from prefopt.collect import verify
from prefopt.collect.importers import ImportConfig, parse_hh, run
from prefopt.data import read_jsonl, row_problem
from prefopt.raft import quote_spans

RAFT = Path("/work/shared/data/raft_sample.jsonl")
if not RAFT.is_file():  # the shared data lives beside the checkout
    RAFT = Path(__file__).resolve().parents[2] / "shared" / "data" / "raft_sample.jsonl"


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _outputs(out: Path):
    card = json.loads((out / "card.json").read_text())
    train, rejects = list(read_jsonl(out / "train.jsonl")), list(read_jsonl(out / "rejects.jsonl"))
    assert card["in"] == len(train) + len(rejects) == card["kept"]["train"] + card["rejected"]
    assert all(row_problem(r) is None for r in train) and all(r["reason"] for r in rejects)
    assert (out / "card.md").read_text().startswith("# Data card")
    return card, train, {r["record"]: r["reason"] for r in rejects}


def test_trl_standard_conversational_explicit_implicit(tmp_path):
    conv = lambda *turns: [{"role": r, "content": c} for r, c in turns]  # noqa: E731
    rows = [
        {"prompt": "Sky colour?", "chosen": "Blue.", "rejected": "Green."},  # standard explicit
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},  # standard implicit
        {"prompt": conv(("user", "Hi")), "chosen": conv(("assistant", "Hello!")), "rejected": conv(("assistant", "Go."))},
        {"chosen": conv(("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello!")),  # conversational implicit
         "rejected": conv(("system", "Be kind."), ("user", "Hi"), ("assistant", "Go away."))},
        {"chosen": "Same.", "rejected": "Same."},  # no prompt can be extracted
        {"prompt": "Q", "chosen": "A"},  # no rejected
        {"chosen": conv(("user", "a"), ("assistant", "b")), "rejected": conv(("user", "c"), ("assistant", "d"))},
        {"prompt": "Sky colour?", "chosen": "Blue.", "rejected": "Blue."},  # chosen == rejected
    ]
    run(ImportConfig(input=_write(tmp_path / "in.jsonl", rows), format="trl", output_dir=str(tmp_path / "o")))
    card, train, rejects = _outputs(tmp_path / "o")
    assert card["kept"]["train"] == 4 and set(rejects) == {5, 6, 7, 8}
    assert train[0]["prompt"] == [{"role": "user", "content": "Sky colour?"}]
    assert train[1]["prompt"][0]["content"] == "The sky is" and train[1]["chosen"][0]["content"] == "blue."
    assert [m["role"] for m in train[3]["prompt"]] == ["system", "user"]
    assert train[3]["rejected"] == [{"role": "assistant", "content": "Go away."}]
    assert "share no" in rejects[7] and "rejected" in rejects[6] and "chosen == rejected" in rejects[8]
    assert [r["meta"]["trl_format"] for r in train] == ["standard/explicit", "standard/implicit",
                                                        "conversational/explicit", "conversational/implicit"]


def test_hh_transcripts(tmp_path):
    base = "\n\nHuman: What is 2+2?\n\nAssistant: Let me think.\n\nHuman: And?"
    rows = [{"chosen": base + "\n\nAssistant: It is 4.", "rejected": base + "\n\nAssistant: It is 5."},
            {"chosen": base + "\n\nAssistant:", "rejected": base + "\n\nAssistant: It is 5."},  # empty chosen
            {"chosen": "no turns here", "rejected": "\n\nHuman: x\n\nAssistant: y"}]
    assert [m["role"] for m in parse_hh(base)] == ["user", "assistant", "user"]
    run(ImportConfig(input=_write(tmp_path / "hh.jsonl", rows), format="hh", output_dir=str(tmp_path / "o")))
    card, train, rejects = _outputs(tmp_path / "o")
    assert len(train) == 1 and set(rejects) == {2, 3}
    assert train[0]["prompt"][-1] == {"role": "user", "content": "And?"} and len(train[0]["prompt"]) == 3
    assert train[0]["chosen"][0]["content"] == "It is 4." and train[0]["rejected"][0]["content"] == "It is 5."


def test_ratings_best_vs_worst_and_margin(tmp_path):
    rows = [
        {"prompt": "p1", "completions": [{"response": "ok", "rating": 3}, {"response": "great", "rating": 5},
                                         {"response": "bad", "rating": 1}]},
        {"prompt": "p2", "completions": ["x", "y"], "ratings": [2, 2]},  # tie
        {"prompt": "p3", "completions": ["x", "y"], "ratings": [2, 2.5]},  # below the margin
        {"prompt": "p4", "completion": "meh", "score": 0.2},  # flat rows, grouped by prompt
        {"prompt": "p4", "completion": "good", "score": 0.9},
        {"prompt": "p5", "completion": "alone", "score": 1.0},
    ]
    run(ImportConfig(input=_write(tmp_path / "r.jsonl", rows), format="ratings", output_dir=str(tmp_path / "o"), min_margin=0.6))
    card, train, rejects = _outputs(tmp_path / "o")
    assert card["in"] == 5 and card["input_records"] == 6 and card["in_unit"].startswith("prompts")
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in train] == [("great", "bad"), ("good", "meh")]
    assert train[0]["meta"]["margin"] == 4 and train[0]["meta"]["n_completions"] == 3
    assert rejects == {2: "all completions rated equally", 3: "margin below --min-margin",
                       5: "fewer than two rated completions"}


def test_duplicates_are_rejects(tmp_path):
    long = "Explain in detail how the water cycle moves water between the oceans, the air and the land over a year"
    rows = [{"prompt": long, "chosen": "Evaporation, then rain.", "rejected": "Magic."},
            {"prompt": long, "chosen": "Evaporation, then rain.", "rejected": "Magic."},
            {"prompt": long + " please", "chosen": "Evaporation, then rain.", "rejected": "Magic."}]
    run(ImportConfig(input=_write(tmp_path / "d.jsonl", rows), format="trl", output_dir=str(tmp_path / "o"), near_dup=0.75))
    card, train, rejects = _outputs(tmp_path / "o")
    assert len(train) == 1 and rejects[2].startswith("exact duplicate of record 1")
    assert rejects[3].startswith("near duplicate of record 1")
    assert card["rejected_by_reason"] == {"exact duplicate": 1, "near duplicate": 1}


@pytest.mark.skipif(not RAFT.is_file(), reason="shared RAFT sample not available")
def test_raft_sample_yields_verified_triples(tmp_path):
    result = CliRunner().invoke(app, ["collect", "import", str(RAFT), "--format", "raft", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    card, train, rejects = _outputs(tmp_path)
    source = {json.loads(line)["id"]: json.loads(line) for line in RAFT.read_text().splitlines()}
    assert card["in"] == 20 and len(train) >= 5 and card["oracle_rate"] == 1.0
    for row in train:
        raw, meta = source[row["meta"]["source_id"]], row["meta"]
        assert row["prompt"] == [{"role": "user", "content": raw["instruction"]}]
        assert row["chosen"][0]["content"] == raw["cot_answer"]
        assert meta["oracle_id"] in meta["doc_ids"] and meta["rejected_source_id"] in meta["doc_ids"]
        assert meta["rejected_source_id"] != meta["oracle_id"]
        docs = [d for g in raw["context"]["sentences"] for d in g]
        src = docs[meta["doc_ids"].index(meta["rejected_source_id"])]
        rejected = row["rejected"][0]["content"]
        assert quote_spans(rejected) and all(verify.found(q, src) and not verify.found(q, raw["oracle_context"])
                                             for q in quote_spans(rejected))
        assert all(verify.found(q, raw["oracle_context"]) for q in quote_spans(row["chosen"][0]["content"]))
    # RAFT's own answers often quote nothing or paraphrase their "quote": those are rejected, with the reason
    assert set(card["rejected_by_reason"]) <= {"chosen quotes nothing from the oracle",
                                               "chosen quote not found verbatim in the oracle"}
    loose = run(ImportConfig(input=str(RAFT), format="raft", output_dir=str(tmp_path / "w"), quote_match="words"))
    assert loose["kept"]["train"] >= len(train)
