"""Fault cases, by class: each asserts the promised behaviour (a one-line error naming the file and what is
wrong, exit 2; or a row rejected with its reason and counts that reconcile; or a recovery equal to the run that
was not interrupted). More in test_reliability.py, test_cli.py and test_collect_resume.py; docs/reliability.md
lists the guarantees."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import QUICKSTART, good_row, no_model_load, settings, write_jsonl
from prefopt.cli import app
from prefopt.errors import disk_fault


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def _one_line_error(result, *words: str) -> None:
    """Exit 2, no traceback, and one `error:` line that holds all of `words`."""
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error: ")]
    assert all(w in line for w in words), result.output


# ---------------------------------------------------------------- values inside rows: the same verdict everywhere

ROW = '{"id": "x", "prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}], ' \
      '"rejected": [{"role": "assistant", "content": "b"}]'
BAD_VALUES = {  # name -> (the bad line, the words of its reason)
    "NaN literal": (ROW + ', "meta": {"score": NaN}}', "NaN is not valid JSON"),
    "Infinity literal": (ROW + ', "meta": {"score": -Infinity}}', "-Infinity is not valid JSON"),
    "a 5000-digit number": (ROW + ', "n": ' + "9" * 5000 + "}", "a number too long to read"),
    "nested 100000 deep": (ROW + ', "meta": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply to read"),
    "lone surrogate": (ROW.replace('"q"', '"q \\ud800"') + "}", "a lone surrogate escape (\\ud800)"),
    "id is a list": ({**good_row(9), "id": [9]}, "`id` must be a string or an integer, not a list"),
    "id is true": ({**good_row(9), "id": True}, "`id` must be a string or an integer, not a boolean"),
    "meta is a list": ({**good_row(9), "meta": [1]}, "`meta` must be an object, not a list"),
    "meta.answer is a number": ({**good_row(9), "meta": {"answer": 42}}, "`meta.answer` must be a string, not a number"),
    "meta.oracle_in_context is a string": ({**good_row(9), "meta": {"oracle_in_context": "yes"}},
                                           "`meta.oracle_in_context` must be a boolean, not a string"),
    "meta.doc_ids holds objects": ({**good_row(9), "meta": {"doc_ids": [{"id": 1}]}},
                                   "`meta.doc_ids` must be a list of strings"),
    "rejected is null": ({**good_row(9), "rejected": None}, "`rejected` must be a non-empty list of messages"),
    "prompt is a string": ({**good_row(9), "prompt": "What?"}, "`prompt` must be a non-empty list of messages"),
}


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_a_bad_value_in_a_row_gets_the_same_verdict_from_validate_dpo_and_eval(tiny_model, tmp_path, monkeypatch,
                                                                               name):
    """`validate` previews the command: the same row is rejected with the same reason, and --strict fails both."""
    no_model_load(monkeypatch)
    line, reason = BAD_VALUES[name]
    data = write_jsonl(tmp_path / "d.jsonl", [good_row(i) for i in range(6)] + [line])
    strict = settings(tmp_path / "strict.yaml", strict=True)
    outputs = [_cli("validate", str(data), "--strict").output]
    for args in (["dpo", "--model", tiny_model, "--output-dir", str(tmp_path / "dpo")],
                 ["eval", "--models", tiny_model, "--output-dir", str(tmp_path / "eval")]):
        result = _cli(*args, "--data", str(data), *strict)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        outputs.append(result.output)
    for out in outputs:
        assert f"d.jsonl:7: {reason}" in out and "read 7, kept 6, rejected 1" in out, out
    (rejected,) = [json.loads(x) for x in (tmp_path / "dpo" / "rejects.jsonl").read_text().splitlines()]
    assert rejected["line"] == 7 and reason in rejected["reason"]


COLLECT_INPUTS = {  # name -> (file, a bad row, the words of its reason)
    "question with a numeric answer": ("questions", {"question": "Q?", "answer": 1990, "doc_id": "d1"},
                                       "`answer` must be a string, not a number"),
    "question with NaN": ("questions", '{"question": "Q?", "answer": NaN, "doc_id": "d1"}', "NaN is not valid JSON"),
    "document text is a list": ("corpus", {"id": "x", "text": ["a", "b"]}, "`text` must be a string, not a list"),
    "document id given twice": ("corpus", None, "duplicate `id` (first on line 1)"),
}


@pytest.mark.parametrize("name", list(COLLECT_INPUTS))
def test_a_bad_collector_input_row_gets_the_same_verdict_from_validate_and_collect(tmp_path, name):
    kind, bad, reason = COLLECT_INPUTS[name]
    src = [json.loads(x) for x in (QUICKSTART / f"{kind}.jsonl").read_text().splitlines()]
    path = write_jsonl(tmp_path / f"{kind}.jsonl", src + [bad if bad is not None else src[0]])
    n = len(src) + 1
    inputs = {"corpus": str(QUICKSTART / "corpus.jsonl"), "questions": str(QUICKSTART / "questions.jsonl"), kind: str(path)}
    for args, words in ((["validate", str(path), "--format", kind, "--strict"], reason),
                        (["collect", "rag", "--corpus", inputs["corpus"], "--questions", inputs["questions"],
                          "--output-dir", str(tmp_path / "strict"), "--strict"], reason)):
        result = _cli(*args)
        assert result.exit_code == 2 and f"{kind}.jsonl:{n}: {words}" in result.output, result.output
        assert f"read {n}, kept {n - 1}, rejected 1" in result.output
    result = _cli("collect", "rag", "--corpus", inputs["corpus"], "--questions", inputs["questions"],
                  "--output-dir", str(tmp_path / "o"))
    assert result.exit_code == 0 and f"read {n}, kept {n - 1}, rejected 1: 1 {reason.split(' (')[0]}" in result.output


def test_a_folder_corpus_file_that_is_not_utf8_is_read_with_a_warning_naming_it(tmp_path, capsys):
    from prefopt.collect.corpus import load_corpus

    (tmp_path / "good.txt").write_text("Plain text.")
    (tmp_path / "old.txt").write_bytes("Caf\xe9 au lait, na\xefve.".encode("latin-1"))
    docs = {d["id"]: d["text"] for d in load_corpus(str(tmp_path))}
    assert docs == {"good.txt": "Plain text.", "old.txt": "Caf\ufffd au lait, na\ufffdve."}
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'old.txt'}: not UTF-8 (byte 0xe9 at offset 3); 2 bad characters" in err
    assert "good.txt" not in err


# ---------------------------------------------------------------- settings files

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "lora_targets: *i\n"
CONFIGS = {  # name -> (file bytes, the words of the error)
    "YAML bomb (anchors and aliases)": (BOMB.encode(), "anchors and aliases (&name, *name) are not allowed"),
    "a key given twice": (b"beta: 0.1\nbeta: 0.5\n", "line 2: 'beta' is given twice (first on line 1)"),
    "not UTF-8": (b"\xff\xfebeta: 0.1\n", "not UTF-8 text (byte 0xff at offset 0)"),
    "a word for a number": (b"epochs: two\n", "epochs: 'two' is not a number"),
    "a list for a number": (b"beta: [1, 2]\n", "beta: [1, 2] is not a number"),
    "infinity": (b"learning_rate: .inf\n", "learning_rate: inf is not a finite number"),
    "an unknown key": (b"bogus: 1\n", "unknown setting(s) bogus; known: "),
    "not a mapping": (b"- beta\n", "expected a mapping of settings, got list"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_bad_settings_file_is_one_line_naming_file_and_setting(tiny_model, tmp_path, name):
    text, words = CONFIGS[name]
    (tmp_path / "c.yaml").write_bytes(text)
    result = _cli("dpo", "--model", tiny_model, "--data", "d.jsonl", "--config", str(tmp_path / "c.yaml"))
    _one_line_error(result, "c.yaml: ", words)


# ---------------------------------------------------------------- a run dir damaged after it finished

def _half(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


DAMAGE = {  # name -> (file, how, commands that must refuse it, the words of the error)
    "adapter cut in half": ("adapter_model.safetensors", _half, ("dpo", "eval", "push"), "truncated or corrupt"),
    "adapter empty": ("adapter_model.safetensors", lambda p: p.write_bytes(b""), ("dpo", "eval", "push"),
                      "truncated or corrupt (0 bytes)"),
    "adapter deleted": ("adapter_model.safetensors", Path.unlink, ("dpo", "eval", "push"), "no adapter_model.safetensors"),
    "adapter config garbage": ("adapter_config.json", lambda p: p.write_text("{{"), ("dpo", "eval", "push"),
                               "adapter_config.json: truncated or corrupt"),
    "run.json cut in half": ("run.json", _half, ("dpo", "eval", "push"), "incomplete or corrupt run.json"),
    "config.yaml garbage": ("config.yaml", lambda p: p.write_text("{{{ not [ yaml"), ("push",),
                            "config.yaml: corrupt run settings: not valid YAML"),
    "config.yaml a list": ("config.yaml", lambda p: p.write_text("- a\n"), ("push",),
                           "config.yaml: corrupt run settings: expected a mapping, got list"),
    "eval.json garbage": ("eval.json", lambda p: p.write_text("{"), ("push",), "eval.json: truncated or corrupt"),
    "tokenizer.json cut in half": ("tokenizer.json", _half, ("dpo", "eval", "push"), "tokenizer"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_run_dir_is_refused_with_one_line_naming_the_file(sft_run, rag_data, tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing may reach a Hub
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    file, damage, commands, words = DAMAGE[name]
    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    damage(run / file)
    data = str(rag_data / "test.jsonl")
    argv = {"dpo": ["dpo", "--model", str(run), "--data", data, "--output-dir", str(tmp_path / "dpo")],
            "eval": ["eval", "--models", str(run), "--data", data, "--output-dir", str(tmp_path / "eval")],
            "push": ["push", str(run), "--repo-id", "me/x"]}
    for command in commands:
        _one_line_error(_cli(*argv[command]), words)


def test_a_damaged_collect_card_stops_push_dataset(sft_run, rag_data, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    data = tmp_path / "data"
    shutil.copytree(rag_data, data)
    (data / "card.json").write_text('{"kept": ')
    import prefopt.push

    monkeypatch.setattr(prefopt.push, "upload", lambda *a, **k: "http://hub/me/x")  # the model goes up; the data stops
    result = _cli("push", str(sft_run), "--repo-id", "me/x", "--dataset", str(data))
    assert result.exit_code == 2 and "card.json: truncated or corrupt" in result.output, result.output


# ---------------------------------------------------------------- a disk that fills up mid-run

def _limited(limit: int):
    """A child process whose files cannot grow past `limit` bytes: writes fail as on a full disk (EFBIG)."""
    def setup():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return setup


def _prefopt(*args: str, limit: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "prefopt.cli", *args], env=env, capture_output=True, text=True,
                          preexec_fn=_limited(limit) if limit else None, timeout=600)


def test_a_disk_that_fills_during_training_is_one_line_and_no_run_is_marked_complete(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [good_row(i) for i in range(8)])
    out = tmp_path / "sft"
    args = ["sft", "--model", tiny_model, "--data", str(data), "--output-dir", str(out), "--max-steps", "2",
            "--batch-size", "2"]
    full = _prefopt(*args, limit=40_000)  # the logs fit; the adapter (about 70 kB) does not
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert "error: a file is over the size limit" in full.stderr and "not marked complete" in full.stderr
    assert not (out / "run.json").exists()
    again = _prefopt(*args)  # space again: the same command finishes the run
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "run.json").is_file()


def test_collect_stopped_by_a_full_disk_resumes_to_the_uninterrupted_output(tmp_path):
    args = ["collect", "rag", "--corpus", "quickstart", "--p", "0.8"]
    assert _prefopt(*args, "--output-dir", str(tmp_path / "straight")).returncode == 0
    out = tmp_path / "full"
    full = _prefopt(*args, "--output-dir", str(out), limit=20_000)  # the partial file outgrows it mid-run
    assert full.returncode == 2 and "a file is over the size limit" in full.stderr, full.stderr[-3000:]
    assert (out / ".partial.jsonl").stat().st_size > 0 and not (out / "card.json").exists()
    again = _prefopt(*args, "--output-dir", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    for name in ("train.jsonl", "dpo.jsonl", "test.jsonl", "rejects.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


@pytest.mark.parametrize("error, fault", [
    (OSError(errno.ENOSPC, "No space left on device", "/run/x"), "the disk is full"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk quota is used up"),
    (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
    (Exception("Error while serializing: I/O error: No space left on device (os error 28)"), "the disk is full"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                  "file write failed"), "the disk is full"),
])
def test_disk_faults_are_recognised_in_any_library_wording(error, fault):
    assert disk_fault(error).startswith(fault)
    wrapped = RuntimeError("saving the checkpoint failed")
    wrapped.__cause__ = error
    assert disk_fault(wrapped).startswith(fault)


@pytest.mark.parametrize("command", [["collect", "rag", "--corpus", "quickstart", "--output-dir"],
                                     ["validate", "d.jsonl", "--rejects"], ["quickstart", "--output-dir"]])
def test_an_output_path_under_a_file_is_one_line(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "d.jsonl", [good_row(i) for i in range(2)])
    (tmp_path / "a-file").write_text("not a dir")
    _one_line_error(_cli(*command, "a-file/out"), "a-file", "choose an output path prefopt can create and write to")


def test_other_errors_keep_their_traceback():
    assert disk_fault(OSError(errno.ECONNREFUSED, "Connection refused")) is None
    assert disk_fault(ValueError("shapes do not match")) is None


# ---------------------------------------------------------------- resuming after the inputs changed

@pytest.mark.parametrize("edited", ["questions", "corpus"])
def test_collect_refuses_to_resume_after_an_input_was_edited(tmp_path, edited):
    """Resumed rows were made from the old file: an edited input is named, and --restart starts afresh."""
    from prefopt.collect import resume
    from prefopt.collect.rag import RagConfig

    files = {k: tmp_path / f"{k}.jsonl" for k in ("corpus", "questions")}
    for k, p in files.items():
        shutil.copy(QUICKSTART / f"{k}.jsonl", p)
    out = tmp_path / "o"
    cfg = RagConfig(corpus=str(files["corpus"]), questions=str(files["questions"]), output_dir=str(out))
    part = resume.Partial(out, resume.fingerprint(cfg))  # an interrupted run: one question done
    part.append("rejects", "q0", {"id": "q0", "reason": "made from the old file"})
    part.f.close()
    lines = files[edited].read_text().splitlines()
    first = json.loads(lines[0])
    first["answer" if edited == "questions" else "text"] += " (edited)"
    files[edited].write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    args = ["collect", "rag", "--corpus", str(files["corpus"]), "--questions", str(files["questions"]),
            "--output-dir", str(out)]
    _one_line_error(_cli(*args), f"holds an interrupted run made with another --{edited} file", "--restart")
    result = _cli(*args, "--restart")
    assert result.exit_code == 0, result.output
    assert "made from the old file" not in (out / "rejects.jsonl").read_text()
