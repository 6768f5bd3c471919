"""What `prefopt sft` and `prefopt dpo` share: TRL arguments from a TrainConfig, metrics logging, saving."""

from __future__ import annotations

import json
from pathlib import Path

from prefopt.config import TrainConfig, save_run
from prefopt.errors import PrefoptError
from prefopt.models import ModelSpec

DS_CONFIGS = Path(__file__).resolve().parent.parent / "ds_configs"
DEFAULT_MAX_LENGTH = 1024


def deepspeed_config(name: str | None) -> str | None:
    """`zero3` -> ds_configs/zero3.json; a path is taken as it is."""
    if not name:
        return None
    path = Path(name)
    if not path.suffix:
        path = DS_CONFIGS / f"{name}.json"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(DS_CONFIGS.glob("*.json")))
        raise PrefoptError(f"--deepspeed {name}: no such config (short names: {known}; or a JSON path)")
    return str(path)


def max_length(cfg: TrainConfig, spec: ModelSpec) -> int:
    """The explicit value, else the one the --model run trained with, else the default."""
    if cfg.max_length:
        return cfg.max_length
    inherited = (spec.run or {}).get("max_length")
    return int(inherited or DEFAULT_MAX_LENGTH)


def resolve_precision(precision: str) -> str:
    """auto: bf16 where the GPU supports it, else fp32 (always fp32 on CPU)."""
    import torch

    if precision != "auto":
        if precision in ("bf16", "fp16") and not torch.cuda.is_available():
            raise PrefoptError(f"--precision {precision} needs a GPU; on CPU use fp32 (or auto)")
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def model_dtype(cfg: TrainConfig):
    """The dtype to load weights in: bf16/fp16 for full fine-tuning in that precision; LoRA keeps the frozen
    base in the training precision and TRL keeps the adapter in fp32 (no dtype mismatch)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[resolve_precision(cfg.precision)]


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest checkpoint-N whose trainer_state.json (written last by the Trainer) is complete."""
    found = []
    for path in Path(run_dir).glob("checkpoint-*"):
        try:
            json.loads((path / "trainer_state.json").read_text())
            found.append((int(path.name.split("-")[1]), str(path)))
        except (OSError, ValueError, IndexError):
            continue  # killed while saving: not complete
    return max(found)[1] if found else None


def train(trainer, cfg: TrainConfig) -> None:
    """trainer.train(), from the latest complete checkpoint with --resume."""
    checkpoint = latest_checkpoint(cfg.output_dir) if cfg.resume else None
    if cfg.resume and checkpoint is None:
        print(f"prefopt: --resume: no complete checkpoint in {cfg.output_dir}; starting from the beginning")
    elif checkpoint:
        print(f"prefopt: resuming from {checkpoint}")
    trainer.train(resume_from_checkpoint=checkpoint)


def trl_args(cfg: TrainConfig, spec: ModelSpec) -> dict:
    """Keyword arguments common to trl.SFTConfig and trl.DPOConfig (and a working CPU multi-process backend)."""
    import torch

    from prefopt.launch import fix_cpu_backend

    fix_cpu_backend()

    precision = resolve_precision(cfg.precision)
    return dict(
        output_dir=cfg.output_dir,
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.epochs,
        seed=cfg.seed,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0.03,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        deepspeed=deepspeed_config(cfg.deepspeed),
        max_length=max_length(cfg, spec),
        report_to=[r.strip() for r in cfg.report_to.split(",")] if cfg.report_to != "none" else "none",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # only when asked: transformers 5.23 warns that the False default of the old name is deprecated
        **({"gradient_checkpointing": True} if cfg.gradient_checkpointing else {}),
    )


def metrics_callback(run_dir: str):
    """A TrainerCallback that appends each log (loss, rewards/..., logps/...) to run_dir/metrics.jsonl."""
    from transformers import TrainerCallback

    path = Path(run_dir) / "metrics.jsonl"

    class MetricsCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            # a resumed run keeps the lines up to its checkpoint and drops those logged after it
            kept = [line for line in (path.read_text().splitlines() if path.is_file() else [])
                    if json.loads(line).get("step", 0) <= state.global_step]
            path.write_text("".join(line + "\n" for line in kept))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with path.open("a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return MetricsCallback()


def plot_curves(run_dir: str) -> Path | None:
    """curves.png: the logged loss (and DPO's reward margin and accuracy) against the step."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    keys = [k for k in ("loss", "rewards/margins", "rewards/accuracies") if any(k in r for r in rows)]
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*points), marker="." if len(points) < 50 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    out = Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def finish(trainer, cfg: TrainConfig, spec: ModelSpec, stage: str, **info) -> None:
    """Save the adapter (or full weights) + tokenizer, config.yaml and run.json (lineage: base model and
    parent run), the training curves and, with --merge, the merged model in OUTPUT_DIR/merged."""
    trainer.save_model(cfg.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(cfg.output_dir)
        save_run(cfg, cfg.output_dir, stage, base_model=spec.base, weights="full" if cfg.full else "adapter",
                 parent=spec.name if spec.run else None, max_length=trainer.args.max_length, **info)
        plot_curves(cfg.output_dir)
    trainer.accelerator.wait_for_everyone()
    if cfg.merge and not cfg.full and trainer.accelerator.is_main_process:
        from prefopt.models import load_model, load_tokenizer, resolve

        merged = Path(cfg.output_dir) / "merged"
        load_model(resolve(cfg.output_dir)).save_pretrained(merged)
        load_tokenizer(resolve(cfg.output_dir)).save_pretrained(merged)
        print(f"prefopt: merged model written to {merged}")
