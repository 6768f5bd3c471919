"""The wheel works outside the repo: built with `pip wheel`, installed without -e into a fresh venv, run from
another directory (the templates and DeepSpeed configs ship inside it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path, **env: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **env})
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow  # a fresh venv and a 2-rank ZeRO-3 run: a few minutes
def test_wheel_installed_outside_the_repo_collects_and_trains_under_zero3(tmp_path):
    import torch

    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(dist)], cwd=tmp_path)
    wheel = next(dist.glob("prefopt-*.whl"))
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run(pip + [f"torch=={torch.__version__.split('+')[0]}"], cwd=tmp_path)  # the CPU build this suite runs on
    _run(pip + [str(wheel)], cwd=tmp_path)
    prefopt, python = str(venv / "bin" / "prefopt"), str(venv / "bin" / "python")
    where = _run([python, "-c", "import prefopt.templates as t, prefopt.train as r; print(t.DEFAULT_DIR, r.DS_CONFIGS)"],
                 cwd=work)
    assert str(ROOT) not in where and "site-packages" in where  # not the checkout's files

    out = _run([prefopt, "collect", "rag", "--corpus", "quickstart", "--output-dir", "data"], cwd=work)
    assert "written to data" in out and (work / "data" / "train.jsonl").stat().st_size > 0
    _run([python, "-c", "from prefopt.tiny import make_tiny_model; make_tiny_model('tiny')"], cwd=work)
    _run([prefopt, "dpo", "--model", "tiny", "--data", "data/train.jsonl", "--output-dir", "dpo", "--deepspeed",
          "zero3", "--num-processes", "2", "--max-steps", "2", "--batch-size", "1", "--on-policy", "0",
          "--max-length", "512"], cwd=work, DS_ACCELERATOR="cpu")
    run = json.loads((work / "dpo" / "run.json").read_text())
    assert run["stage"] == "dpo" and (work / "dpo" / "adapter_model.safetensors").is_file()
    saved = (work / "dpo" / "config.yaml").read_text()
    assert "deepspeed: zero3" in saved and "num_processes: 2" in saved
