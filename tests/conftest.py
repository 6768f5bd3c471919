"""Fixtures: a tiny random Llama with a tokenizer trained here (no network), and small RAG triples."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prefopt.resources import QUICKSTART  # noqa: F401  (tests import it from here)
from prefopt.tiny import make_tiny_model

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def rag_data(tmp_path_factory) -> Path:
    """Triples from the quickstart corpus (train.jsonl / test.jsonl)."""
    from prefopt.collect.rag import RagConfig, run

    out = tmp_path_factory.mktemp("rag")
    run(RagConfig(corpus=str(QUICKSTART / "corpus.jsonl"), questions=str(QUICKSTART / "questions.jsonl"),
                  output_dir=str(out), distractors=3, p=0.8, seed=1))
    return out


def settings(path: Path, **values) -> list[str]:
    """`--config FILE` for settings that are not flags: FILE (YAML) holds `values` (pass `experimental={...}`
    for the experimental block)."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values))
    return ["--config", str(path)]


def good_row(i: int) -> dict:
    """A valid preference row (TRL's conversational format)."""
    return {"id": f"r{i}", "prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
            "chosen": [{"role": "assistant", "content": f"It is {2 * i}."}],
            "rejected": [{"role": "assistant", "content": f"It is {2 * i + 1}."}]}


def write_jsonl(path: Path, lines: list) -> Path:
    """Lines of a JSONL file: a dict is dumped, a string is written as it is (a broken line)."""
    import json

    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def no_model_load(monkeypatch) -> None:
    """Fail the test if the command loads model weights (data and settings are checked first)."""
    import prefopt.models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(prefopt.models, "load_model", refuse)


def invoke(*args: str):
    """Run the prefopt CLI in-process; fail with its output when it exits non-zero."""
    from typer.testing import CliRunner

    from prefopt.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="session")
def sft_run(tiny_model, rag_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    invoke("sft", "--model", tiny_model, "--data", str(rag_data / "train.jsonl"), "--output-dir", str(out),
           "--max-steps", "3", "--batch-size", "2", "--max-length", "512", "--learning-rate", "1e-2")
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def kill_then_resume(command, tmp_path: Path, checkpoint: str = "checkpoint-4") -> tuple[Path, Path]:
    """Run `command(out_dir, *extra)` (an argv list) straight through into tmp_path/straight; run it again into
    tmp_path/killed, SIGKILL it once `checkpoint` is complete, and rerun it with --resume. Returns both dirs."""
    import signal
    import subprocess
    import time

    env = {**os.environ, "TQDM_DISABLE": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(command(straight), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / checkpoint / "trainer_state.json").is_file():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "run.json").exists()  # it really died before the end
    subprocess.run(command(killed, "--resume"), check=True, env=env, capture_output=True)
    return straight, killed


def assert_same_adapter_and_steps(a: Path, b: Path, steps: int) -> None:
    """Equal adapters (within 1e-6) and metrics.jsonl logging each step exactly once."""
    import json

    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
    logged = [r["step"] for r in map(json.loads, (b / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert logged == list(range(1, steps + 1))
