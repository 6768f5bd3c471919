"""Prefix-shared DPO (one packed row per pair) against TRL's two rows per pair, on RAG pairs: one JSON line.

    python benchmarks/dpo_prefix_sharing.py                 # SmolLM2-135M (bundled), batch 2: about 9 minutes
    python benchmarks/dpo_prefix_sharing.py --model tiny    # the tests' tiny random Llama: a quick check
    python benchmarks/dpo_prefix_sharing.py [--steps 8] [--trl-steps 4] [--warmup 2] [--batch-size 2] [--rounds 1]

Data: `collect rag --retriever bm25` on the bundled quickstart corpus with K = 4 and K = 8 distractor documents per prompt; the
pairs are its dpo.jsonl (every prompt shows the oracle: the rows `prefopt dpo` trains on), the first
steps x batch-size of them, the same rows for every arm. Arms, each trial in a fresh process, all with the same
model, rows, batch, steps, learning rate, seed and max length:
- two_sequence: `prefopt dpo` with prefix_sharing false (trl.DPOTrainer): prefopt's defaults otherwise (LoRA,
  precomputed reference, LM head on the completion positions only, loss sigmoid + sft), on_policy and
  hard_margin off so that every arm trains on the collected pairs;
- prefix_shared: the same with prefix sharing on (prefopt.prefix.trainer_class(), prefopt's default);
- trl: dpo_cpu_overhead.py's plain-TRL script (TRL's defaults: reference = the adapter disabled, run at every
  step; every position through the LM head), for reference.
The arms alternate (reversed order every other trial group) over --rounds rounds; figures are medians.

Per arm and K:
- tokens_per_pair: token positions the policy's forward runs per pair, padding included (rows x width of the
  input ids reaching the input embedding, over the pairs of the batch, mean over the training steps): TRL's two
  padded rows, or the one packed row (prompt + chosen + 1 + rejected, padded to the batch's longest);
- s_per_step: mean time of an optimizer step after the first --warmup steps (an in-loop callback stamps the
  end of each step; the reference precompute, model load and data preparation are out). Every arm trains on the
  same rows in the same order, so the prefopt arms' means are over the same pairs; step_s lists each step.
  The plain-TRL arm, 3-5 times slower, runs --trl-steps steps (the first of the same rows): a reference figure;
- peak_mb: the process's peak RSS on a CPU (ru_maxrss: also counts libraries, the load and the precompute),
  torch.cuda.max_memory_allocated over training on a GPU;
- precompute_s: prefopt's one-time reference pass over the rows (packed too in prefix_shared), not in s/step.
ratio_k4 / ratio_k8 = prefix_shared s/step / two_sequence s/step (below 1: prefix sharing is faster);
vs_trl_k4 = prefix_shared s/step / trl s/step at K = 4.
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

from _bench import QUICKSTART, instrument, make_tiny_model, median, rnd, run_child  # noqa: E402

ARMS = ("two_sequence", "prefix_shared", "trl")
KS = (4, 8)


def rag_pairs(out: Path, k: int, n: int) -> Path:
    """The first n pairs of dpo.jsonl from `collect rag --distractors k` on the quickstart corpus."""
    import contextlib
    import io

    from prefopt.collect.rag import RagConfig, run

    with contextlib.redirect_stdout(io.StringIO()):
        run(RagConfig(corpus=str(QUICKSTART / "corpus.jsonl"), questions=str(QUICKSTART / "questions.jsonl"),
                      output_dir=str(out), distractors=k, p=0.8, seed=1, retriever="bm25"))
    rows = [line for line in (out / "dpo.jsonl").read_text().splitlines() if line.strip()][:n]
    (out / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    return out / "pairs.jsonl"


def count_positions(per_pair: list[float]) -> None:
    """Wrap trl.DPOTrainer (after `instrument`, before prefopt.prefix subclasses it): the policy forward of each
    training step (the one with gradients) appends rows x width of its input ids / pairs in the batch."""
    import torch
    import trl

    class Counted(trl.DPOTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            if not hasattr(self, "_positions_hook"):
                def hook(module, hook_args):
                    if torch.is_grad_enabled():
                        per_pair.append(hook_args[0].numel() / self._pairs)

                embedding = self.accelerator.unwrap_model(model).get_input_embeddings()
                self._positions_hook = embedding.register_forward_pre_hook(hook)
            self._pairs = inputs["input_ids"].size(0) // 2  # TRL's batch: B chosen rows, then B rejected
            return super().training_step(model, inputs, *args, **kwargs)

    Counted.__name__ = trl.DPOTrainer.__name__
    trl.DPOTrainer = Counted


def child(a) -> None:
    rec = instrument()
    per_pair: list[float] = []
    count_positions(per_pair)
    t = time.perf_counter()
    if a.child == "trl":
        from dpo_cpu_overhead import trl_arm

        a.steps = a.trl_steps
        trl_arm(a)
    else:
        from prefopt.dpo import DPOConfig, run

        run(DPOConfig(model=a.model, data=a.data, output_dir=a.out, max_steps=a.steps, batch_size=a.batch_size,
                      learning_rate=a.lr, seed=a.seed, max_length=a.max_length, on_policy=0, hard_margin=0,
                      prefix_sharing=a.child == "prefix_shared"))
    out = rec.result(warmup=a.warmup)
    ends = rec.step_end[max(a.warmup, 1) - 1:]
    out.update(process_s=time.perf_counter() - t, step_s=[rnd(y - x, 3) for x, y in zip(ends, ends[1:])],
               trainer=[c.__name__ for c in type(rec.trainer).__mro__][:4],
               tokens_per_pair=sum(per_pair) / len(per_pair), tokens_per_pair_steps=per_pair)
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m (bundled), tiny, or a local model dir")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per trial, --warmup of them untimed")
    ap.add_argument("--trl-steps", type=int, default=4, help="steps of the plain-TRL arm (the slowest)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--workdir", default=None, help="where the model, data and run dirs go (default: a temp dir)")
    ap.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)

    if a.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    work = Path(a.workdir or tempfile.mkdtemp(prefix="prefopt-prefix-"))
    if a.model == "tiny":
        model = make_tiny_model(work / "tiny-llama")
    else:
        from prefopt.models import BUNDLED, bundled_path

        model = str(bundled_path(a.model)) if a.model in BUNDLED else a.model
    data = {k: rag_pairs(work / f"rag-k{k}", k, a.steps * a.batch_size) for k in KS}
    common = ["--model", model, "--steps", str(a.steps), "--trl-steps", str(a.trl_steps), "--warmup", str(a.warmup), "--batch-size",
              str(a.batch_size), "--max-length", str(a.max_length), "--lr", str(a.lr), "--seed", str(a.seed)]
    results = {k: {arm: [] for arm in ARMS} for k in KS}
    for r in range(a.rounds):
        for j, k in enumerate(KS):
            for arm in ARMS if (r + j) % 2 == 0 else ARMS[::-1]:
                out = work / f"k{k}-{arm}-{r}"
                results[k][arm].append(run_child(__file__, ["--child", arm, "--data", str(data[k]), "--out",
                                                            str(out), *common]))
    mem_key = "cuda_peak_mb" if a.device == "cuda" else "peak_rss_mb"
    figures = {k: {arm: {"tokens_per_pair": rnd(median([x["tokens_per_pair"] for x in res]), 1),
                         "s_per_step": rnd(median([x["s_per_step"] for x in res]), 4),
                         "step_s": res[0]["step_s"],
                         "peak_mb": rnd(median([x.get(mem_key) for x in res]), 1),
                         "precompute_s": rnd(median([x["precompute_s"] for x in res]), 3),
                         "trainer": res[0]["trainer"][0]}
                   for arm, res in results[k].items()} for k in KS}
    sps = lambda k, arm: figures[k][arm]["s_per_step"]  # noqa: E731
    print(json.dumps({
        "benchmark": "dpo_prefix_sharing", "model": a.model,
        **{f"ratio_k{k}": rnd(sps(k, "prefix_shared") / sps(k, "two_sequence"), 3) for k in KS},
        "vs_trl_k4": rnd(sps(4, "prefix_shared") / sps(4, "trl"), 3),
        "tokens_per_pair_k4": {arm: f["tokens_per_pair"] for arm, f in figures[4].items()},
        **{f"k{k}": figures[k] for k in KS},
        "settings": {"data": "quickstart `collect rag --retriever bm25` dpo.jsonl, K=4 and K=8 distractors",
                     "pairs": a.steps * a.batch_size, "steps": a.steps, "trl_steps": a.trl_steps, "warmup": a.warmup,
                     "batch_size": a.batch_size, "rounds": a.rounds, "max_length": a.max_length, "lr": a.lr,
                     "seed": a.seed, "device": a.device, "memory": "torch.cuda.max_memory_allocated during training"
                     if a.device == "cuda" else "peak RSS of the process (ru_maxrss)",
                     "cpus": os.cpu_count(), "python": platform.python_version()},
    }))


if __name__ == "__main__":
    main()
