"""DPO throughput and MFU on a GPU, plain TRL defaults vs prefopt's defaults side by side: one JSON line.

    python benchmarks/gpu_throughput.py [--steps 20] [--batch-size 4] [--seq-min 1024] [--seq-max 2048]
                                        [--peak-tflops 790] [--arms trl,prefopt,prefopt_two_rows,...]
    python benchmarks/gpu_throughput.py --tiny      # CPU smoke test: a tiny config, short sequences, 4 steps

Model: a random-init Llama of 0.85B parameters, 0.79B without the input embedding (hidden 2048, 16 layers,
intermediate 5632, 32 heads / 8 KV heads, vocab 32000), saved in bf16 with a word-level tokenizer (one token
per word, so lengths are exact).
Data: --steps x --batch-size synthetic DPO pairs (random words) whose chosen sequence (prompt + answer) has a
length drawn from a Beta(2, 2) spread over [--seq-min, --seq-max], an answer of 64-512 tokens, and a rejected
answer 0.5-1.5x the chosen one (clipped to the same range): real tokens vary a lot within a batch, as in
RAG/chat preference data, so padding is part of what is measured.

Arms, each in a fresh process, all with the same LoRA (r 16, alpha 32, all-linear) and max length:
- trl: a plain TRL script with TRL's defaults (DPOTrainer + LoraConfig, ref = adapter disabled, bf16,
  gradient checkpointing on, no padding-free);
- prefopt: `prefopt dpo` with prefopt's defaults (--ref implicit), each pair packed into one row (prefix sharing);
- prefopt_two_rows: the same with `prefix_sharing: false` (TRL's two rows per pair): the gain of prefix sharing;
- prefopt_precomputed: `prefopt dpo --ref precomputed` (the reference pass runs once before training and is
  reported as precompute_s, outside the step time);
- prefopt_nogc: prefopt with gradient checkpointing off (prefopt's trl_args patched in the child: prefopt
  itself passes nothing when --gradient-checkpointing is not given, so TRL's default, on, applies).

Measured per arm over the steps after --warmup-steps, from an in-loop callback that synchronizes CUDA at the
end of each optimizer step: s/step, real tokens/s (attention-mask tokens, chosen + rejected, prompt counted in
both) and padded tokens/s, and MFU = k·N·T / time / peak, N = parameters without the input embedding
(attention FLOPs not counted), T = real tokens of the two-row form (so for the prefix-shared arms the MFU
is an effective figure: the two-row work done per second), peak = --peak-tflops (790: the bf16 dense matmul rate measured
on this workplace's H100). k = 8 when the reference forward runs during the step (trl, prefopt,
prefopt_two_rows, prefopt_nogc: the adapter-disabled reference is a second forward), k = 6 when it is precomputed; each arm
reports `accounting` and both mfu_8nt and mfu_6nt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import CHATML, instrument, rnd, run_child  # noqa: E402

ARMS = ("trl", "prefopt", "prefopt_two_rows", "prefopt_precomputed", "prefopt_nogc")
FULL = dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=5632, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=32000)
TINY = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=32000)
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant"]


def make_model(path: Path, shape: dict, max_pos: int) -> dict:
    """A random Llama + a word-level tokenizer (words w0, w1, ... and the chat specials): returns sizes."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for i in range(shape["vocab_size"] - len(SPECIAL)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="<|im_end|>", bos_token="<|im_start|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = CHATML
    config = LlamaConfig(**shape, max_position_embeddings=max_pos, pad_token_id=0, eos_token_id=3, bos_token_id=2,
                         tie_word_embeddings=False)
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config)
    if cuda:
        model = model.to(torch.bfloat16)
    n_all = sum(p.numel() for p in model.parameters())
    n_embed = model.model.embed_tokens.weight.numel()
    model.save_pretrained(path)
    fast.save_pretrained(path)
    del model
    return {"params": n_all, "params_no_embedding": n_all - n_embed}


def make_data(path: Path, n: int, seq_min: int, seq_max: int, vocab: int, seed: int) -> dict:
    """n synthetic conversational triples; lengths in tokens of the chat-formatted sequences."""
    rng = random.Random(seed)
    words = lambda k: " ".join(f"w{rng.randrange(vocab - len(SPECIAL))}" for _ in range(max(k, 1)))  # noqa: E731
    # chat template tokens: prompt <|im_start|> user ... <|im_end|> <|im_start|> assistant = 5; answer + <|im_end|>
    lengths = []
    with path.open("w") as f:
        for _ in range(n):
            total_c = seq_min + int((seq_max - seq_min) * rng.betavariate(2, 2))
            ans_c = min(rng.randint(64, 512), total_c // 2)
            prompt = total_c - ans_c
            ans_r = int(ans_c * rng.uniform(0.5, 1.5))
            ans_r = max(seq_min - prompt, min(ans_r, seq_max - prompt), 1)
            lengths.append((prompt + ans_c, prompt + ans_r))
            f.write(json.dumps({"prompt": [{"role": "user", "content": words(prompt - 5)}],
                                "chosen": [{"role": "assistant", "content": words(ans_c - 1)}],
                                "rejected": [{"role": "assistant", "content": words(ans_r - 1)}]}) + "\n")
    flat = [x for pair in lengths for x in pair]
    return {"rows": n, "seq_len_min": min(flat), "seq_len_max": max(flat),
            "seq_len_mean": round(sum(flat) / len(flat), 1)}


def child(a) -> None:
    import torch

    rec = instrument()
    t = time.perf_counter()
    if a.child == "trl":
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        tokenizer = AutoTokenizer.from_pretrained(a.model)
        model = AutoModelForCausalLM.from_pretrained(a.model)
        rows = [json.loads(line) for line in Path(a.data).read_text().splitlines()]
        kw = {} if torch.cuda.is_available() else {"bf16": False}  # TRL's bf16 default needs a GPU to mean bf16
        args = DPOConfig(output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=a.batch_size,
                         max_length=a.max_length, report_to="none", save_strategy="no", **kw)
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=LoraConfig(**LORA))
        trainer.train()
    else:
        import prefopt.train
        from prefopt.dpo import DPOConfig, run

        if a.child == "prefopt_nogc":
            base = prefopt.train.trl_args
            prefopt.train.trl_args = lambda cfg, spec: {**base(cfg, spec), "gradient_checkpointing": False}
        run(DPOConfig(model=a.model, data=a.data, output_dir=a.out, max_steps=a.steps, batch_size=a.batch_size,
                      max_length=a.max_length, ref="precomputed" if a.child == "prefopt_precomputed" else "implicit",
                      prefix_sharing=a.child != "prefopt_two_rows"))
    out = rec.result(warmup=a.warmup_steps)
    out["process_s"] = time.perf_counter() - t
    out["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the timing")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-min", type=int, default=1024)
    ap.add_argument("--seq-max", type=int, default=2048)
    ap.add_argument("--peak-tflops", type=float, default=790.0)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--tiny", action="store_true", help="tiny config, sequences 48-96, 4 steps (CPU smoke test)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--max-length", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    if a.tiny:
        a.seq_min, a.seq_max = min(a.seq_min, 48), min(a.seq_max, 96)
        a.steps, a.batch_size, a.warmup_steps = min(a.steps, 4), min(a.batch_size, 2), 1

    work = Path(a.workdir or tempfile.mkdtemp(prefix="prefopt-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = TINY if a.tiny else FULL
    t = time.perf_counter()
    sizes = make_model(work / "model", shape, max_pos=max(4096, a.seq_max + 64))
    data = make_data(work / "pairs.jsonl", a.steps * a.batch_size, a.seq_min, a.seq_max, shape["vocab_size"], a.seed)
    setup_s = time.perf_counter() - t
    max_length = a.seq_max + 8  # no truncation
    arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    common = ["--model", str(work / "model"), "--data", str(work / "pairs.jsonl"), "--steps", str(a.steps),
              "--batch-size", str(a.batch_size), "--max-length", str(max_length),
              "--warmup-steps", str(a.warmup_steps)]
    n = sizes["params_no_embedding"]
    out = {"benchmark": "gpu_throughput"}
    for arm in arms:
        r = run_child(__file__, ["--child", arm, "--out", str(work / arm), *common])
        k = 6 if arm == "prefopt_precomputed" else 8
        tps = r["tokens_per_s"]
        out[arm] = {
            "s_per_step": rnd(r["s_per_step"], 4), "tokens_per_s": rnd(tps, 1),
            "padded_tokens_per_s": rnd(r["padded_tokens_timed"] / (r["s_per_step"] * r["timed_steps"]), 1),
            "padding_fraction": rnd(1 - r["tokens_timed"] / r["padded_tokens_timed"], 3),
            "accounting": f"{k}NT", "mfu": rnd(k * n * tps / (a.peak_tflops * 1e12), 4),
            "mfu_8nt": rnd(8 * n * tps / (a.peak_tflops * 1e12), 4),
            "mfu_6nt": rnd(6 * n * tps / (a.peak_tflops * 1e12), 4),
            "peak_mem_mb": rnd(r.get("cuda_peak_mb", r["peak_rss_mb"]), 1),
            "gradient_checkpointing": r["gradient_checkpointing"], "bf16": r["bf16"],
            "precompute_s": rnd(r["precompute_s"], 2) if k == 6 else None, "process_s": rnd(r["process_s"], 1),
        }
        out["device"] = r["device"]
    if "trl" in out and "prefopt" in out:
        out["prefopt_vs_trl_tokens_per_s"] = rnd(out["prefopt"]["tokens_per_s"] / out["trl"]["tokens_per_s"], 3)
    out["settings"] = {"model": ("tiny " if a.tiny else "") + "random Llama " + json.dumps(shape),
                       **sizes, "mfu_params": "params without the input embedding; attention FLOPs not counted",
                       "data": data, "steps": a.steps, "warmup_steps": a.warmup_steps, "batch_size": a.batch_size,
                       "seq_min": a.seq_min, "seq_max": a.seq_max, "max_length": max_length,
                       "peak_tflops": a.peak_tflops, "lora": "r16 a32 all-linear", "setup_s": round(setup_s, 1),
                       "python": platform.python_version(), "cpus": os.cpu_count()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
