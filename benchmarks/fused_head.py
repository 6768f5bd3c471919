"""TRL's fused LM head on a CPU: every position against the labelled ones only (prefopt's
`head_on_completions_only`), forward + backward of one batch of a real model: one JSON line.

    python benchmarks/fused_head.py                       # SmolLM2-135M (bundled), 8 rows of 280 + 40 tokens
    python benchmarks/fused_head.py --model PATH --batch 4 --prompt 1000 --completion 60

Random token ids, the last `--completion` of each row labelled (the rest -100, as a prompt is in SFT and DPO).
Every weight is trainable, so the head's own gradient is computed too. The two arms alternate over --rounds
rounds after one warm-up each; the figures are medians. `logps_equal` compares the log-probs bitwise,
`max_grad_diff` the gradients of the last round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m (bundled) or a local model dir")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=280, help="unlabelled tokens per row")
    ap.add_argument("--completion", type=int, default=40, help="labelled tokens per row")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()

    import torch
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from prefopt.models import BUNDLED, bundled_path
    from prefopt.train import head_on_completions_only

    path = bundled_path(a.model) if a.model in BUNDLED else a.model
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    add_fused_lm_head(model)
    length = a.prompt + a.completion
    ids = torch.randint(3, model.config.vocab_size, (a.batch, length), generator=torch.Generator().manual_seed(0))
    labels = ids.masked_fill(torch.arange(length) < a.prompt, -100)

    def step():
        model.zero_grad()
        start = time.perf_counter()
        logps = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
        logps.sum().backward()
        return time.perf_counter() - start, logps.detach(), [p.grad for p in model.parameters()]

    head_on_completions_only()
    compact = trl_utils._use_triton
    gates = {"every_position": compact.trl_gate, "completions_only": compact}  # TRL's own gate, kept by the wrapper
    seconds = {name: [] for name in gates}
    last = {}
    for r in range(a.rounds + 1):  # round 0 warms up
        for name, gate in gates.items():
            trl_utils._use_triton = gate
            took, logps, grads = step()
            last[name] = logps, [g.clone() for g in grads]
            if r:
                seconds[name].append(took)
    (lp_all, g_all), (lp_compact, g_compact) = last["every_position"], last["completions_only"]
    print(json.dumps({
        "model": str(a.model), "batch": a.batch, "prompt": a.prompt, "completion": a.completion,
        "threads": torch.get_num_threads(),
        **{f"{name}_s": round(statistics.median(s), 3) for name, s in seconds.items()},
        "speedup": round(statistics.median(seconds["every_position"]) / statistics.median(seconds["completions_only"]), 2),
        "logps_equal": torch.equal(lp_all, lp_compact),
        "max_grad_diff": max((x - y).abs().max().item() for x, y in zip(g_all, g_compact)),
    }))


if __name__ == "__main__":
    main()
