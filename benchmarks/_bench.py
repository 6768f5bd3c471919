"""Shared helpers of the training benchmarks (not a benchmark itself).

- `make_tiny_model`: the tests' 2-layer random Llama + a byte-level BPE tokenizer trained offline
  (prefopt/tiny.py);
- `make_rag_data`: RAG triples from the bundled quickstart corpus (as the tests' `rag_data` fixture);
- `instrument`: swaps `trl.DPOTrainer` / `trl.SFTTrainer` for subclasses that record, the same way for every
  arm, the wall time at the end of each optimizer step, the real and padded tokens of each micro-batch and the
  time spent precomputing reference log-probs; prefopt calls `trl.DPOTrainer(...)` at run time, so it gets the
  instrumented class too, without any change to prefopt;
- `child` / `run_child`: each trial runs in a fresh process that prints one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "prefopt" / "resources" / "quickstart"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from prefopt.tiny import CHATML, make_tiny_model  # noqa: E402,F401 - re-exported for the benchmarks


def make_rag_data(out: Path) -> Path:
    """train.jsonl of RAG triples from the quickstart corpus (3 BM25 distractors: the data docs/benchmarks.md was
    measured on)."""
    from prefopt.collect.rag import RagConfig, run

    out = Path(out)
    if not (out / "train.jsonl").is_file():
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            run(RagConfig(corpus=str(QUICKSTART / "corpus.jsonl"), questions=str(QUICKSTART / "questions.jsonl"),
                          output_dir=str(out), distractors=3, p=0.8, seed=1, retriever="bm25"))
    return out / "train.jsonl"


def read_triples(path: str | Path) -> list[dict]:
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")}
            for r in (json.loads(line) for line in Path(path).read_text().splitlines() if line.strip())]


class Recorder:
    """What the instrumented trainers record; `result()` turns it into numbers."""

    def __init__(self):
        self.step_end: list[float] = []  # perf_counter at the end of each optimizer step
        self.step_cpu: list[float] = []  # process CPU time (all threads) at the end of each optimizer step
        self.tokens: list[int] = []  # real tokens (attention_mask) of each micro-batch
        self.padded: list[int] = []  # tokens incl. padding of each micro-batch
        self.precompute_s = 0.0
        self.init_s = 0.0
        self.rss_train_begin_mb = None
        self.trainer = None

    def result(self, warmup: int = 1) -> dict:
        """Time per step over the steps after the first `warmup` ones: (end of last - end of step `warmup`) /
        (steps - warmup), so process start, model load, dataset building and the first (warm-up) steps are out."""
        import torch

        ts = self.step_end
        n = len(ts)
        warmup = max(1, min(warmup, n - 1))
        window = ts[-1] - ts[warmup - 1] if warmup >= 1 else ts[-1] - ts[0]
        steps = n - warmup if warmup >= 1 else n - 1
        diffs = [b - a for a, b in zip(ts, ts[1:])][max(warmup - 1, 0):]
        ga = self.trainer.args.gradient_accumulation_steps if self.trainer else 1
        tok_window = sum(self.tokens[warmup * ga:n * ga]) if warmup >= 1 else sum(self.tokens[ga:n * ga])
        pad_window = sum(self.padded[warmup * ga:n * ga]) if warmup >= 1 else sum(self.padded[ga:n * ga])
        cpu = self.step_cpu
        out = {
            "steps": n, "timed_steps": steps, "s_per_step": window / steps if steps else None,
            "cpu_s_per_step": (cpu[-1] - cpu[warmup - 1]) / steps if steps else None,
            "median_s_per_step": statistics.median(diffs) if diffs else None,
            "tokens_timed": tok_window, "padded_tokens_timed": pad_window,
            "tokens_per_s": tok_window / window if window else None,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_train_begin_mb": self.rss_train_begin_mb,
            "precompute_s": self.precompute_s, "trainer_init_s": self.init_s,
        }
        if torch.cuda.is_available():
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if self.trainer is not None:
            runtime = [h["train_runtime"] for h in self.trainer.state.log_history if "train_runtime" in h]
            out["train_runtime_s"] = runtime[-1] if runtime else None
            out["gradient_checkpointing"] = bool(self.trainer.args.gradient_checkpointing)
            out["bf16"] = bool(self.trainer.args.bf16)
            out["logging_steps"] = self.trainer.args.logging_steps
        return out


def instrument() -> Recorder:
    """Replace trl.DPOTrainer and trl.SFTTrainer by recording subclasses (identical for every arm)."""
    import psutil
    import torch
    import trl
    from transformers import TrainerCallback

    rec = Recorder()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            rec.rss_train_begin_mb = psutil.Process().memory_info().rss / 2**20
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()  # the training peak, not the load's

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            rec.step_end.append(time.perf_counter())
            rec.step_cpu.append(time.process_time())

    def wrap(base):
        class Instrumented(base):
            def __init__(self, *args, callbacks=None, **kwargs):
                t = time.perf_counter()
                super().__init__(*args, callbacks=[*(callbacks or []), StepTimer()], **kwargs)
                rec.init_s = time.perf_counter() - t
                rec.trainer = self

            def training_step(self, model, inputs, *args, **kwargs):
                mask = inputs.get("attention_mask")
                if mask is not None:
                    rec.tokens.append(int(mask.sum()))
                    rec.padded.append(int(mask.numel()))
                return super().training_step(model, inputs, *args, **kwargs)

            if hasattr(base, "_precompute_ref_logps"):
                def _precompute_ref_logps(self, *args, **kwargs):
                    t = time.perf_counter()
                    try:
                        return super()._precompute_ref_logps(*args, **kwargs)
                    finally:
                        sync()
                        rec.precompute_s += time.perf_counter() - t

        Instrumented.__name__ = base.__name__
        return Instrumented

    trl.DPOTrainer = wrap(trl.DPOTrainer)
    trl.SFTTrainer = wrap(trl.SFTTrainer)
    return rec


def run_child(script: str, args: list[str]) -> dict:
    """Run `python script --child ...` in a fresh process; its last stdout line is its JSON result."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"child {' '.join(args)} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rnd(x, n=4):
    return None if x is None else round(x, n)
