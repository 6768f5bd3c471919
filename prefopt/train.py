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


def trl_args(cfg: TrainConfig, spec: ModelSpec) -> dict:
    """Keyword arguments common to trl.SFTConfig and trl.DPOConfig (and a working CPU multi-process backend)."""
    import torch

    from prefopt.launch import fix_cpu_backend

    fix_cpu_backend()

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
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
        bf16=bf16,
        deepspeed=deepspeed_config(cfg.deepspeed),
        max_length=max_length(cfg, spec),
        report_to="none",
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
            if state.is_world_process_zero and not state.global_step:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with path.open("a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return MetricsCallback()


def finish(trainer, cfg: TrainConfig, spec: ModelSpec, stage: str, **info) -> None:
    """Save adapter + tokenizer, then config.yaml and run.json (lineage: base model and parent run)."""
    trainer.save_model(cfg.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(cfg.output_dir)
        save_run(cfg, cfg.output_dir, stage, base_model=spec.base,
                 parent=spec.adapters[-1] if spec.adapters else None,
                 max_length=trainer.args.max_length, **info)
    trainer.accelerator.wait_for_everyone()
