"""Reference strategies of `prefopt dpo` (--ref implicit / copy / precomputed) against the SFT run: one JSON line.

    python benchmarks/ref_strategies.py [--rounds 2] [--steps 12] [--batch-size 4] [--max-length 512]
    python benchmarks/ref_strategies.py --model PATH_OR_NAME --device cuda --steps 20   # a real model, on a GPU

For each of `sft` (prefopt sft on the same rows, same batch: the memory yardstick), `implicit`, `copy` and
`precomputed`, a fresh process runs prefopt with the same model, data, batch, steps, LoRA and max length, and
reports, the same way for each:
- s_per_step: (end of the last optimizer step - end of the first) / (steps - 1), from an in-loop callback;
- peak memory: on CUDA torch.cuda.max_memory_allocated over training (reset at train begin), on CPU the
  process's peak RSS (ru_maxrss, which also counts libraries and the load);
- precompute_s (precomputed only): the one-time pass that computes the reference log-probs of the whole
  training set (TRL's _precompute_ref_logps), which is not part of the step time.
Arms alternate over --rounds rounds (reversed order every other round); figures are medians. The target from
issue 6 is LoRA + implicit peak ≤ 1.15x the SFT run's peak (`implicit_vs_sft_peak`).

The default model is the tests' tiny random Llama (built here offline) and the data the quickstart RAG triples;
--data takes any prefopt triples file. --device cpu hides CUDA from the children.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import instrument, make_rag_data, make_tiny_model, median, rnd, run_child  # noqa: E402

ARMS = ("sft", "implicit", "copy", "precomputed")


def child(a) -> None:
    rec = instrument()
    t = time.perf_counter()
    common = dict(model=a.model, data=a.data, output_dir=a.out, max_steps=a.steps, batch_size=a.batch_size,
                  seed=a.seed, max_length=a.max_length)
    if a.child == "sft":
        from prefopt.sft import SFTConfig, run

        run(SFTConfig(**common))
    else:
        from prefopt.dpo import DPOConfig, run

        run(DPOConfig(**common, ref=a.child))
    out = rec.result(warmup=1)
    out["process_s"] = time.perf_counter() - t
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model (Hub id, path, smollm2-135m, run dir); default: tiny Llama")
    ap.add_argument("--data", default=None, help="triples JSONL; default: quickstart RAG triples")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)

    if a.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    work = Path(a.workdir or tempfile.mkdtemp(prefix="prefopt-ref-"))
    model = a.model or make_tiny_model(work / "tiny-llama")
    data = a.data or str(make_rag_data(work / "rag"))
    # the precomputed arm precomputes the whole training set: keep it to the rows the steps use
    rows = [line for line in Path(data).read_text().splitlines() if line.strip()][: a.steps * a.batch_size]
    (work / "rows.jsonl").write_text("\n".join(rows) + "\n")
    arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    common = ["--model", model, "--data", str(work / "rows.jsonl"), "--steps", str(a.steps), "--batch-size",
              str(a.batch_size), "--max-length", str(a.max_length), "--seed", str(a.seed)]
    results = {arm: [] for arm in arms}
    for r in range(a.rounds):
        for arm in arms if r % 2 == 0 else arms[::-1]:
            results[arm].append(run_child(__file__, ["--child", arm, "--out", str(work / f"{arm}-{r}"), *common]))
    mem_key = "cuda_peak_mb" if a.device == "cuda" else "peak_rss_mb"
    out = {"benchmark": "ref_strategies", "memory": "torch.cuda.max_memory_allocated during training" if
           a.device == "cuda" else "peak RSS of the process (ru_maxrss)"}
    for arm, res in results.items():
        out[arm] = {"s_per_step": rnd(median([x["s_per_step"] for x in res]), 5),
                    "peak_mb": rnd(median([x.get(mem_key) for x in res]), 1),
                    "rss_at_train_begin_mb": rnd(median([x["rss_train_begin_mb"] for x in res]), 1)}
        if arm == "precomputed":
            out[arm]["precompute_s"] = rnd(median([x["precompute_s"] for x in res]), 3)
            out[arm]["precompute_rows"] = a.steps * a.batch_size
    if "sft" in results:
        for arm in ("implicit", "copy", "precomputed"):
            if arm in results:
                out[f"{arm}_vs_sft_peak"] = rnd(out[arm]["peak_mb"] / out["sft"]["peak_mb"], 3)
    if "implicit" in results:
        for arm in ("copy", "precomputed"):
            if arm in results:
                out[f"{arm}_vs_implicit_s_per_step"] = rnd(out[arm]["s_per_step"] / out["implicit"]["s_per_step"], 3)
    out["settings"] = {"model": a.model or "tiny random Llama (2 layers, hidden 32, vocab 600)",
                       "data": a.data or "quickstart RAG triples", "device": a.device, "steps": a.steps,
                       "batch_size": a.batch_size, "max_length": a.max_length, "seed": a.seed, "rounds": a.rounds,
                       "lora": "prefopt defaults (r16 a32 all-linear)", "loss": "sigmoid (prefopt default)",
                       "cpus": os.cpu_count(), "python": platform.python_version()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
