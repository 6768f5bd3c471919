"""Issue 7, security: sandboxed templates, no remote code unless asked, safetensors first, and secrets never
written: a planted HF_TOKEN / OPENAI_API_KEY value appears nowhere in the run dirs or the logs of sft + dpo + eval."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefopt.cli import app
from prefopt.errors import PrefoptError

HF_SECRET = "hf_PLANTEDsecretTOKEN0123456789abcdef"
OPENAI_SECRET = "sk-PLANTEDsecretKEY0123456789abcdef"


@pytest.mark.parametrize("source", ["{{ ''.__class__.__mro__ }}", "{{ ().__class__.__base__.__subclasses__() }}",
                                    "{{ question.__init__.__globals__ }}"])
def test_a_malicious_template_is_refused_with_a_clear_error(tmp_path, source):
    from prefopt.templates import Templates

    (tmp_path / "raft_rejected.j2").write_text(source)
    with pytest.raises(PrefoptError, match=r"raft_rejected\.j2: refused by the sandbox \(access to attribute"):
        Templates(str(tmp_path)).render("raft_rejected.j2", question="q", quote="x", answer="a")
    (tmp_path / "raft_rejected.j2").write_text("{% if %}")
    with pytest.raises(PrefoptError, match=r"raft_rejected\.j2:1: template syntax error"):
        Templates(str(tmp_path)).render("raft_rejected.j2")


def test_remote_code_is_off_unless_asked_and_weights_load_from_safetensors(tiny_model, monkeypatch, tmp_path):
    import transformers

    from prefopt.config import TrainConfig
    from prefopt.evaluate import EvalConfig
    from prefopt.models import load_model, load_tokenizer, resolve, use_safetensors

    assert TrainConfig(data="x").trust_remote_code is False and EvalConfig(data="x").trust_remote_code is False
    for cmd in ("sft", "dpo", "eval", "validate"):
        shown = CliRunner().invoke(app, [cmd, "--help"]).output  # a flag, or a setting of the --config file
        assert "--trust-remote-code" in shown or "trust_remote_code" in shown
    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: seen.append(k) or real(*a, **k))
    load_model(resolve(tiny_model))
    load_model(resolve(tiny_model), trust_remote_code=True)
    assert [(k["trust_remote_code"], k["use_safetensors"]) for k in seen] == [(False, True), (True, True)]
    assert load_tokenizer(resolve(tiny_model)) is not None
    (tmp_path / "pytorch_model.bin").write_bytes(b"")  # only pickled weights: transformers' weights_only loader
    assert use_safetensors(str(tmp_path)) is None and use_safetensors("org/some-model") is True


def _grep(root: Path, secrets: tuple[str, ...]) -> list[str]:
    hits = []
    for f in root.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            hits += [f"{f}: {s[:12]}..." for s in secrets if s.encode() in data]
    return hits


def test_planted_tokens_appear_in_no_run_dir_config_metric_card_or_log(tiny_model, rag_data, tmp_path, monkeypatch,
                                                                       caplog):
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)
    caplog.set_level(logging.DEBUG)
    runner, outputs = CliRunner(), []
    data = str(rag_data / "train.jsonl")
    for args in (["sft", "--model", tiny_model, "--data", data, "--output-dir", str(tmp_path / "sft"),
                  "--max-steps", "2", "--batch-size", "2", "--save-steps", "1", "--max-length", "512"],
                 ["dpo", "--model", str(tmp_path / "sft"), "--data", data, "--output-dir", str(tmp_path / "dpo"),
                  "--max-steps", "2", "--batch-size", "2", "--save-steps", "1"],
                 ["eval", "--models", str(tmp_path / "sft"), str(tmp_path / "dpo"), "--data",
                  str(rag_data / "test.jsonl"), "--output-dir", str(tmp_path / "eval"), "--limit", "2",
                  "--max-new-tokens", "4"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output + repr(result.exception)
        outputs.append(result.output)
    (tmp_path / "logs.txt").write_text("\n".join(outputs) + caplog.text)
    assert (tmp_path / "dpo" / "run.json").is_file() and list((tmp_path / "dpo").glob("checkpoint-*"))
    assert json.loads((tmp_path / "dpo" / "run.json").read_text())["argv"]  # argv is recorded, without secrets
    assert _grep(tmp_path, (HF_SECRET, OPENAI_SECRET)) == []


def test_argv_with_a_secret_is_redacted_in_run_json(monkeypatch):
    from prefopt.config import redact

    monkeypatch.setenv("MY_API_KEY", "abcdefgh12345678")
    assert redact(["prefopt", "--x", "abcdefgh12345678", "a=abcdefgh12345678"]) == ["prefopt", "--x", "***", "a=***"]
