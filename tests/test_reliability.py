"""Issue 7, reliability: bad input gets a clear answer (file-level: one line naming file, line and what was
expected, exit 2; row-level: rejects file with reasons, counts reconcile), --strict, data checked before the model
loads, preflight of the output dir, atomic final saves (run.json last). The kill -9 tests: collection in
tests/test_collect_resume.py::test_resume_after_kill_equals_an_uninterrupted_run, sft in
tests/test_trainer_options.py::test_sigkill_then_resume_gives_the_uninterrupted_adapter, dpo below (marked slow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefopt.cli import app
from prefopt.data import check_file
from conftest import (assert_same_adapter_and_steps, good_row, kill_then_resume, no_model_load, settings,
                      write_jsonl)

runner = CliRunner()


def _mixed(path: Path) -> Path:
    """8 good rows and 2 bad ones: a missing `rejected` (line 3) and a truncated line (line 10)."""
    bad = good_row(99)
    del bad["rejected"]
    lines = [good_row(i) for i in range(8)]
    lines.insert(2, bad)
    lines.append(json.dumps(good_row(100))[:40])
    return write_jsonl(path, lines)


def _cli(*args: str):
    return runner.invoke(app, list(args))


def test_eight_good_two_bad_rows_give_eight_kept_two_rejected_with_reasons(tmp_path):
    checked = check_file(_mixed(tmp_path / "mixed.jsonl"))
    assert (checked.read, len(checked.kept), len(checked.rejects)) == (10, 8, 2)
    assert [(r["line"], r["reason"].split(":")[0].split(" (")[0]) for r in checked.rejects] == \
        [(3, "missing `rejected`"), (10, "not valid JSON")]
    result = _cli("validate", str(tmp_path / "mixed.jsonl"), "--rejects", str(tmp_path / "rej.jsonl"))
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].endswith("read 10, kept 8, rejected 2")
    rejects = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [3, 10] and all(r["reason"] for r in rejects)
    assert rejects[0]["row"]["id"] == "r99" and rejects[1]["text"].startswith('{"id": "r100"')
    strict = _cli("validate", str(tmp_path / "mixed.jsonl"), "--strict")
    assert strict.exit_code == 2 and "strict: a rejected row" in strict.output and "mixed.jsonl:3" in strict.output


def _msg(role="assistant", content="x"):
    return [{"role": role, "content": content}]


ROW_LEVEL = {  # name -> (a bad row, the reason it is rejected with)
    "missing rejected": ({k: v for k, v in good_row(0).items() if k != "rejected"}, "missing `rejected`"),
    "empty content": ({**good_row(0), "chosen": _msg(content="  ")}, "empty or non-string content"),
    "non-string content": ({**good_row(0), "rejected": _msg(content=3)}, "empty or non-string content"),
    "unknown role": ({**good_row(0), "prompt": _msg(role="narrator")}, "unknown role"),
    "unhashable role": ({**good_row(0), "prompt": _msg(role=["user"])}, "unknown role"),
    "chosen == rejected": ({**good_row(0), "rejected": good_row(0)["chosen"]}, "chosen == rejected"),
    "too long": ({**good_row(0), "chosen": _msg(content="word " * 300)}, "too long for --max-length (306 > 100 tokens)"),
    "not an object": ([1, 2], "expected a JSON object, got list"),
    "truncated line": ('{"prompt": [{"role": "us', "a truncated line?"),
}


@pytest.mark.parametrize("name", list(ROW_LEVEL))
def test_row_level_problems_go_to_the_rejects_file_with_their_reason(tmp_path, name):
    bad, reason = ROW_LEVEL[name]
    path = write_jsonl(tmp_path / "d.jsonl", [good_row(1), bad, good_row(2)])
    result = _cli("validate", str(path), "--max-length", "100", "--rejects", str(tmp_path / "rej.jsonl"),
                  "--format", "preference")
    assert result.exit_code == 0, result.output
    assert "read 3, kept 2, rejected 1" in result.output and reason in result.output
    (rej,) = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert rej["line"] == 2 and reason in rej["reason"]


def _parquet(path: Path, rows: list[dict]) -> Path:
    from datasets import Dataset

    Dataset.from_list(rows).to_parquet(str(path))
    return path


FILE_LEVEL = {  # name -> (file maker, the words of the one-line error)
    "not JSON": (lambda p: p.write_text("id,prompt,chosen\n1,a,b\n"), "d.jsonl:1: not JSON (Expecting value"),
    "a JSON array": (lambda p: p.write_text(json.dumps([good_row(0), good_row(1)], indent=1)), "a single JSON list"),
    "wrong encoding": (lambda p: p.write_bytes(json.dumps(good_row(0)).encode() + b"\n" + '{"a": "é"}'.encode("latin-1")),
                       "d.jsonl:2: not UTF-8 text (byte 0xe9"),
    "empty file": (lambda p: p.write_text("\n\n"), "d.jsonl: empty file; expected JSON Lines"),
    "missing field in every row": (lambda p: write_jsonl(p, [{k: v for k, v in good_row(i).items() if k != "rejected"}
                                                       for i in range(3)]), "d.jsonl:1: no row has `rejected`"),
    "no such file": (lambda p: None, "d.jsonl: no such file"),
}


@pytest.mark.parametrize("name", list(FILE_LEVEL))
def test_file_level_problems_are_one_line_naming_file_and_line_exit_2(tmp_path, name):
    make, words = FILE_LEVEL[name]
    path = tmp_path / "d.jsonl"
    make(path)
    for args in (["validate", str(path)], ["dpo", "--model", "./no-such-model", "--data", str(path)],
                 ["eval", "--models", "./no-such-model", "--data", str(path), "--output-dir", str(tmp_path / "e")]):
        result = _cli(*args)
        assert result.exit_code == 2, result.output
        assert words in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_parquet_files_bad_file_and_bad_rows(tmp_path):
    bad = tmp_path / "x.parquet"
    bad.write_text("not parquet at all")
    result = _cli("validate", str(bad))
    assert result.exit_code == 2 and "x.parquet: not a readable Parquet file" in result.output
    rows = [good_row(i) for i in range(4)]
    rows[1] = {**rows[1], "rejected": rows[1]["chosen"]}
    result = _cli("validate", str(_parquet(tmp_path / "d.parquet", rows)))
    assert result.exit_code == 0 and "d.parquet:2: rejected: chosen == rejected" in result.output
    assert "read 4, kept 3, rejected 1" in result.output


def test_corpus_and_questions_files(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "d1", "text": "A fact."}, {"id": "d2", "text": ""}])
    result = _cli("validate", str(corpus), "--format", "corpus")
    assert "c.jsonl:2: rejected: missing or empty `text`" in result.output and "kept 1, rejected 1" in result.output
    qs = write_jsonl(tmp_path / "q.jsonl", [{"question": "Q?", "answer": "A"}])
    result = _cli("validate", str(qs), "--format", "questions")
    assert result.exit_code == 2 and "q.jsonl:1: no row has `doc_id`" in result.output
    # the collector's own reader: a file in the wrong encoding is one line naming file and line
    bad = tmp_path / "corpus.jsonl"
    bad.write_bytes(b'{"id": "d1", "text": "caf\xe9"}\n')
    result = _cli("collect", "rag", "--corpus", str(bad), "--questions", str(qs), "--output-dir", str(tmp_path / "o"))
    assert result.exit_code == 2 and "corpus.jsonl:1: not UTF-8 text" in result.output


def test_yaml_config_and_flags(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("beta: [0.1\n")
    result = _cli("dpo", "--config", str(bad))
    assert result.exit_code == 2 and "c.yaml: not valid YAML" in result.output and "line 1" in result.output
    bad.write_text("- a list\n")
    result = _cli("dpo", "--config", str(bad))
    assert result.exit_code == 2 and "c.yaml: expected a mapping of settings, got list" in result.output
    result = _cli("validate", str(bad), "--format", "nope")
    assert result.exit_code == 2 and "--format: 'nope' is not one of" in result.output


def test_data_fails_before_the_model_loads_and_strict(tiny_model, tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    data = _mixed(tmp_path / "mixed.jsonl")
    # sft needs no `rejected`: only the truncated line is rejected there
    for stage, line, n in (("sft", "mixed.jsonl:10: not valid JSON", 1), ("dpo", "mixed.jsonl:3: missing `rejected`", 2)):
        result = _cli(stage, "--model", tiny_model, "--data", str(data), "--output-dir", str(tmp_path / stage),
                      *settings(tmp_path / "strict.yaml", strict=True))
        assert result.exit_code == 2, result.output
        assert line in result.output and "(strict: a rejected row fails the run" in result.output
        assert len((tmp_path / stage / "rejects.jsonl").read_text().splitlines()) == n
    result = _cli("eval", "--models", tiny_model, "--data", str(data), "--output-dir", str(tmp_path / "e"),
                  *settings(tmp_path / "strict.yaml", strict=True))
    assert result.exit_code == 2 and "strict: a rejected row fails the run" in result.output


def test_preflight_catches_an_unwritable_or_full_output_dir(tiny_model, tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    data = write_jsonl(tmp_path / "d.jsonl", [good_row(i) for i in range(4)])
    (tmp_path / "file").write_text("a file, not a dir")
    result = _cli("sft", "--model", tiny_model, "--data", str(data), "--output-dir", str(tmp_path / "file" / "run"))
    assert result.exit_code == 2 and "not writable" in result.output, result.output
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    result = _cli("dpo", "--model", tiny_model, "--data", str(data), "--output-dir", str(tmp_path / "full"))
    assert result.exit_code == 2 and "1 MiB free, the run needs about" in result.output, result.output
    assert not list((tmp_path / "full").glob(".prefopt-probe-*"))


def test_rows_too_long_for_the_tokenizer_are_rejected_and_the_run_goes_on(tiny_model, tmp_path):
    rows = [good_row(i) for i in range(8)] + [{**good_row(8), "chosen": _msg(content="alpha beta gamma " * 60)},
                                           {**good_row(9), "rejected": good_row(9)["chosen"]}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "dpo"
    result = _cli("dpo", "--model", tiny_model, "--data", str(data), "--output-dir", str(out), "--max-steps", "1",
                  "--batch-size", "2", "--max-length", "128")
    assert result.exit_code == 0, result.output
    assert "read 10, kept 8, rejected 2" in result.output
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [9, 10]
    assert rejects[0]["reason"].startswith("too long for --max-length (") and rejects[1]["reason"] == "chosen == rejected"
    assert (out / "run.json").is_file() and not (out / ".tmp-final").exists()


def test_a_run_killed_before_run_json_is_refused_as_a_model(tiny_model, tmp_path, monkeypatch):
    import prefopt.train

    def die(*a, **k):
        raise RuntimeError("killed after the adapter was moved, before run.json")

    monkeypatch.setattr(prefopt.train, "plot_curves", die)
    data = write_jsonl(tmp_path / "d.jsonl", [good_row(i) for i in range(4)])
    out = tmp_path / "sft"
    result = _cli("sft", "--model", tiny_model, "--data", str(data), "--output-dir", str(out), "--max-steps", "1")
    assert isinstance(result.exception, RuntimeError)
    assert (out / "adapter_model.safetensors").is_file() and not (out / "run.json").exists()
    result = _cli("dpo", "--model", str(out), "--data", str(data), "--output-dir", str(tmp_path / "dpo"))
    assert result.exit_code == 2 and "incomplete prefopt run dir (no run.json" in result.output
    (out / "run.json").write_text('{"stage": "sf')  # cut short
    result = _cli("eval", "--models", str(out), "--data", str(data), "--output-dir", str(tmp_path / "e"))
    assert result.exit_code == 2 and "incomplete or corrupt run.json" in result.output


def _dpo_cmd(sft_run, data, out, *extra):
    return [sys.executable, "-m", "prefopt.cli", "dpo", "--model", str(sft_run), "--data", str(data),
            "--output-dir", str(out), "--max-steps", "8", "--batch-size", "2", "--save-steps", "2",
            "--learning-rate", "1e-2", "--seed", "5", *extra]


@pytest.mark.slow  # three processes of DPO: about 1-2 minutes on 2 shared cores; `make test-slow`
def test_dpo_sigkill_then_resume_gives_the_uninterrupted_adapter(sft_run, rag_data, tmp_path):
    straight, killed = kill_then_resume(lambda out, *x: _dpo_cmd(sft_run, rag_data / "train.jsonl", out, *x), tmp_path)
    assert_same_adapter_and_steps(straight, killed, 8)


def test_strict_collect_fails_on_any_reject_but_writes_its_outputs(tmp_path):
    raft = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "raft_sample.jsonl"
    if not raft.is_file():
        pytest.skip("../shared/data is not beside this checkout")
    result = runner.invoke(app, ["collect", "import", str(raft), "--format", "raft", "--output-dir", str(tmp_path), "--strict"])
    assert result.exit_code == 2 and "--strict:" in result.output and "rejected" in result.output
    assert (tmp_path / "rejects.jsonl").read_text().strip() and (tmp_path / "card.json").is_file()


def test_an_output_dir_that_holds_an_input_is_refused(sft_run, rag_data, tmp_path, monkeypatch):
    """DPO into its own SFT run, or a run into the dir of its data file, would overwrite what it reads."""
    no_model_load(monkeypatch)
    adapter = (Path(sft_run) / "adapter_model.safetensors").read_bytes()
    collected = (rag_data / "rejects.jsonl").read_bytes()  # collect's rejects: sft/dpo would write theirs there
    for args, name in [(["dpo", "--model", str(sft_run), "--data", str(rag_data / "train.jsonl"), "--output-dir",
                         str(sft_run)], str(sft_run)),
                       (["sft", "--model", str(sft_run), "--data", str(rag_data / "train.jsonl"), "--output-dir",
                         str(rag_data)], str(rag_data / "train.jsonl")),
                       (["dpo", "--model", str(sft_run), "--data", str(rag_data / "train.jsonl"), "--output-dir",
                         str(Path(sft_run).parent)], str(rag_data / "train.jsonl"))]:  # the dir above both
        result = _cli(*args)
        assert result.exit_code == 2 and f"holds an input of this run ({name})" in result.output, result.output
    assert (Path(sft_run) / "adapter_model.safetensors").read_bytes() == adapter
    assert (Path(sft_run) / "run.json").is_file() and (rag_data / "rejects.jsonl").read_bytes() == collected


def test_a_new_run_in_a_finished_run_dir_removes_its_completion_marker_first(tiny_model, tmp_path, monkeypatch):
    """Until the new run finishes, the dir must not pass as the old, complete run."""
    import prefopt.train

    data = write_jsonl(tmp_path / "d.jsonl", [good_row(i) for i in range(4)])
    out = tmp_path / "sft"
    assert _cli("sft", "--model", tiny_model, "--data", str(data), "--output-dir", str(out), "--max-steps", "1",
                "--batch-size", "2").exit_code == 0 and (out / "run.json").is_file()

    def die(*a, **k):
        raise RuntimeError("killed while training")

    monkeypatch.setattr(prefopt.train, "train", die)
    result = _cli("sft", "--model", tiny_model, "--data", str(data), "--output-dir", str(out), "--max-steps", "2",
                  "--seed", "7")
    assert isinstance(result.exception, RuntimeError) and not (out / "run.json").exists()
    result = _cli("eval", "--models", str(out), "--data", str(data), "--output-dir", str(tmp_path / "e"))
    assert result.exit_code == 2 and "incomplete prefopt run dir" in result.output


def test_a_second_run_on_a_busy_output_dir_is_refused(tiny_model, tmp_path, monkeypatch):
    """Two processes on one output dir: the second gets one line naming the holder, and nothing is written."""
    import subprocess

    no_model_load(monkeypatch)
    monkeypatch.delenv("PREFOPT_LOCKED", raising=False)
    data = write_jsonl(tmp_path / "d.jsonl", [good_row(i) for i in range(4)])
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from prefopt.rundir import lock_output_dir; "
                               "lock_output_dir(sys.argv[1]); print('locked', flush=True); time.sleep(120)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for args in (["sft", "--model", tiny_model, "--data", str(data), "--output-dir", str(out)],
                     ["collect", "rag", "--corpus", "quickstart", "--output-dir", str(out)]):
            result = _cli(*args)
            assert result.exit_code == 2, result.output
            assert f"--output-dir {out}: in use by another prefopt run (pid {holder.pid} on " in result.output
        assert sorted(p.name for p in out.iterdir()) == [".prefopt.lock"]
    finally:
        holder.kill()
        holder.wait()
    assert _cli("collect", "rag", "--corpus", "quickstart", "--output-dir", str(out)).exit_code == 0  # free again


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_is_never_complete(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [good_row(i) for i in range(8)])
    out = tmp_path / "sft"
    result = _cli("sft", "--model", tiny_model, "--data", str(data), "--output-dir", str(out), "--max-steps", "6",
                  "--batch-size", "2", "--learning-rate", "1e30")
    assert result.exit_code == 2 and "is nan: training diverged" in result.output, result.output
    assert "Traceback" not in result.output and not (out / "run.json").exists()
    assert not (out / "adapter_model.safetensors").exists()


def test_resume_refuses_a_checkpoint_trained_with_other_settings_or_data(tiny_model, tmp_path):
    """Another learning rate, seed or data file than the checkpoint's: one line naming what changed, nothing
    trained; the same settings resume (here: nothing left to train)."""
    data = write_jsonl(tmp_path / "d.jsonl", [good_row(i) for i in range(8)])
    other = write_jsonl(tmp_path / "other.jsonl", [good_row(i) for i in range(1, 9)])
    out = tmp_path / "sft"
    base = ["sft", "--model", tiny_model, "--output-dir", str(out), "--max-steps", "4", "--batch-size", "2",
            "--save-steps", "2", "--learning-rate", "1e-2"]
    assert _cli(*base, "--data", str(data)).exit_code == 0
    saved = json.loads((out / "checkpoint-4" / "prefopt_run.json").read_text())
    assert saved["settings"]["learning_rate"] == 1e-2 and "resume" not in saved["settings"]
    for extra, needle in [(["--data", str(data), "--learning-rate", "2e-2"], "learning_rate 0.01 -> 0.02"),
                          (["--data", str(data), "--seed", "7"], "seed 42 -> 7"),
                          (["--data", str(other)], f"data: {other} is not the file it trained on")]:
        result = _cli(*base[:-2], *(["--learning-rate", "1e-2"] if "--learning-rate" not in extra else []), *extra,
                      "--resume")
        assert result.exit_code == 2 and "--resume: " in result.output and needle in result.output, result.output
    result = _cli(*base, "--data", str(data), "--resume")
    assert result.exit_code == 0 and "resuming from" in result.output and (out / "run.json").is_file()


def test_a_run_dir_that_names_itself_as_parent_is_an_error_not_a_hang(tmp_path):
    """What an older prefopt left when a DPO run overwrote its own SFT parent."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"stage": "dpo", "base_model": "x", "weights": "adapter",
                                              "parent": str(run)}))
    data = write_jsonl(tmp_path / "d.jsonl", [good_row(i) for i in range(2)])
    result = _cli("eval", "--models", str(run), "--data", str(data), "--output-dir", str(tmp_path / "e"))
    assert result.exit_code == 2 and "its lineage loops" in result.output, result.output


@pytest.mark.parametrize("saved", [True, False])
def test_a_launch_is_judged_by_its_saved_run_not_a_ranks_teardown_exit_code(tmp_path, monkeypatch, capsys, saved):
    """A rank can abort in gloo's teardown after the run is saved (exit 250): the launch succeeded when run.json
    was written, and failed, one line, when it was not."""
    import subprocess

    from prefopt import launch
    from prefopt.config import TrainConfig
    from prefopt.errors import PrefoptError

    cfg = TrainConfig(data="train.jsonl", output_dir=str(tmp_path / "run"), num_processes=2)

    def fake_launch(cmd, **kwargs):
        assert "deepspeed.launcher.runner" in cmd
        if saved:
            (tmp_path / "run").mkdir()
            (tmp_path / "run" / "run.json").write_text("{}")
        return subprocess.CompletedProcess(cmd, 250)

    monkeypatch.setattr(launch.subprocess, "run", fake_launch)
    if saved:
        assert launch.relaunch(cfg, "sft") is True
        assert "after the run was saved (exit code 250)" in capsys.readouterr().out
    else:
        with pytest.raises(PrefoptError, match="a rank failed under the DeepSpeed launcher"):
            launch.relaunch(cfg, "sft")
