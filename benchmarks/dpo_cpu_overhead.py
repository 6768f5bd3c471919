"""CPU overhead of `prefopt dpo` against a minimal plain-TRL script: prints one JSON line.

    python benchmarks/dpo_cpu_overhead.py [--rounds 3] [--steps 30] [--batch-size 4] [--max-length 512]

Both arms train the same tiny random Llama (the tests' model, built here offline) on the same RAG triples
(the quickstart corpus), with the same batch, steps, learning rate, seed, LoRA (r 16, alpha 32, all-linear),
loss (sigmoid, β 0.1) and max length, each trial in a fresh process, alternating prefopt / TRL for --rounds
rounds so that load on a shared machine hits both alike. The plain-TRL arm (`trl_arm` below) is what a user
would write by hand: DPOTrainer + LoraConfig, TRL's defaults otherwise, except bf16 off (prefopt trains in
fp32 on CPU; TRL's bf16=True default would be a different precision).

Time per step is measured the same way in both arms, from inside the training loop: a callback stamps the end
of every optimizer step and s/step = (end of the last step - end of the first) / (steps - 1), so process
start, imports, model load, dataset tokenization and the first (warm-up) step are excluded. Figures are the
median over rounds; ratio = prefopt / TRL (target ≤ 1.05). Peak RSS is the child process's ru_maxrss.

--variant names prefopt settings to vary for diagnosis (e.g. `--prefopt-logging-steps 10`).
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

from _bench import instrument, make_rag_data, make_tiny_model, median, read_triples, rnd, run_child  # noqa: E402

LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def prefopt_arm(a) -> None:
    from prefopt.dpo import DPOConfig, run

    run(DPOConfig(model=a.model, data=a.data, output_dir=a.out, max_steps=a.steps, batch_size=a.batch_size,
                  learning_rate=a.lr, seed=a.seed, max_length=a.max_length, loss="sigmoid", beta=0.1,
                  logging_steps=a.prefopt_logging_steps))


def trl_arm(a) -> None:
    """The minimal plain-TRL script."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model)
    dataset = Dataset.from_list(read_triples(a.data))
    args = DPOConfig(output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=a.batch_size,
                     learning_rate=a.lr, seed=a.seed, max_length=a.max_length, loss_type=["sigmoid"], beta=0.1,
                     bf16=False, report_to="none", save_strategy="no",
                     gradient_checkpointing=False)  # prefopt's setting (TRL 1.16 defaults to True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=LoraConfig(**LORA))
    trainer.train()
    trainer.save_model(a.out)


def child(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    rec = instrument()
    t = time.perf_counter()
    (prefopt_arm if a.child == "prefopt" else trl_arm)(a)
    out = rec.result(warmup=1)
    out["process_train_s"] = time.perf_counter() - t
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each arm (1: CPU time is not blurred "
                    "by idle OpenMP threads spinning, and a busy second core disturbs the runs less)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--prefopt-logging-steps", type=int, default=1, help="prefopt's --logging-steps (default 1, "
                    "prefopt's own default)")
    ap.add_argument("--workdir", default=None, help="where the tiny model, data and run dirs go (default: a temp dir)")
    ap.add_argument("--child", choices=["prefopt", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)

    work = Path(a.workdir or tempfile.mkdtemp(prefix="prefopt-bench-"))
    model = make_tiny_model(work / "tiny-llama")
    data = make_rag_data(work / "rag")
    common = ["--model", model, "--data", str(data), "--steps", str(a.steps), "--batch-size", str(a.batch_size),
              "--max-length", str(a.max_length), "--lr", str(a.lr), "--seed", str(a.seed),
              "--prefopt-logging-steps", str(a.prefopt_logging_steps), "--threads", str(a.threads)]
    results = {"prefopt": [], "trl": []}
    for r in range(a.rounds):
        for arm in ("prefopt", "trl") if r % 2 == 0 else ("trl", "prefopt"):
            out = work / f"{arm}-{r}"
            results[arm].append(run_child(__file__, ["--child", arm, "--out", str(out), *common]))
    p = median([x["s_per_step"] for x in results["prefopt"]])
    t = median([x["s_per_step"] for x in results["trl"]])
    paired = lambda key: [x[key] / y[key] for x, y in zip(results["prefopt"], results["trl"])]  # noqa: E731
    print(json.dumps({
        "benchmark": "dpo_cpu_overhead",
        "prefopt_s_per_step": rnd(p, 5), "trl_s_per_step": rnd(t, 5), "ratio": rnd(p / t, 3),
        "paired_ratio_median": rnd(median(paired("s_per_step")), 3),
        "paired_ratios": [rnd(x, 3) for x in paired("s_per_step")],
        "cpu_ratio": rnd(median([x["cpu_s_per_step"] for x in results["prefopt"]])
                         / median([x["cpu_s_per_step"] for x in results["trl"]]), 3),
        "paired_cpu_ratio_median": rnd(median(paired("cpu_s_per_step")), 3),
        "prefopt_steps_per_s": rnd(1 / p, 2), "trl_steps_per_s": rnd(1 / t, 2),
        "prefopt_median_step_s": rnd(median([x["median_s_per_step"] for x in results["prefopt"]]), 5),
        "trl_median_step_s": rnd(median([x["median_s_per_step"] for x in results["trl"]]), 5),
        "prefopt_peak_rss_mb": rnd(median([x["peak_rss_mb"] for x in results["prefopt"]]), 1),
        "trl_peak_rss_mb": rnd(median([x["peak_rss_mb"] for x in results["trl"]]), 1),
        "rss_ratio": rnd(median([x["peak_rss_mb"] for x in results["prefopt"]])
                         / median([x["peak_rss_mb"] for x in results["trl"]]), 3),
        "prefopt_process_s": rnd(median([x["process_train_s"] for x in results["prefopt"]]), 2),
        "trl_process_s": rnd(median([x["process_train_s"] for x in results["trl"]]), 2),
        "per_round_s_per_step": {k: [rnd(x["s_per_step"], 5) for x in v] for k, v in results.items()},
        "settings": {"model": "tiny random Llama (2 layers, hidden 32, vocab 600)", "data": "quickstart RAG triples",
                     "steps": a.steps, "batch_size": a.batch_size, "max_length": a.max_length, "lr": a.lr,
                     "seed": a.seed, "loss": "sigmoid", "beta": 0.1, "lora": "r16 a32 all-linear",
                     "prefopt_logging_steps": a.prefopt_logging_steps,
                     "trl_logging_steps": results["trl"][0]["logging_steps"],
                     "gradient_checkpointing": {k: v[0]["gradient_checkpointing"] for k, v in results.items()},
                     "rounds": a.rounds, "torch_threads": a.threads, "timing": "end of step 1 to end of last step, in-loop callback",
                     "cpus": os.cpu_count(), "python": platform.python_version()},
    }))


if __name__ == "__main__":
    main()
