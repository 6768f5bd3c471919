"""`prefopt sft`: supervised fine-tuning (LoRA by default) on the chosen answers, with the loss on them alone."""

from __future__ import annotations

from dataclasses import dataclass

from prefopt.config import TrainConfig, opt


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning on the chosen side of preference triples, or on chat `messages` rows."""

    learning_rate: float = opt(1e-3, "Peak learning rate (linear decay, 3% warmup).")
    epochs: float = opt(2.0, "Passes over the data.")


def run(cfg: SFTConfig) -> None:
    from prefopt.data import load_sft_rows, sft_dataset
    from prefopt.launch import relaunch

    rows = load_sft_rows(cfg.data)  # bad data fails before the model loads
    if relaunch(cfg, "sft"):
        return

    import trl

    from prefopt.models import load_model, load_tokenizer, lora_config, resolve
    from prefopt.train import finish, metrics_callback, model_dtype, train, trl_args

    spec = resolve(cfg.model)
    tokenizer = load_tokenizer(spec)
    # loaded before the TRL config: under ZeRO-3 that would partition the load and break merging adapters
    model = load_model(spec, model_dtype(cfg) if cfg.full else None, cfg.attn_implementation)
    args = trl.SFTConfig(**trl_args(cfg, spec), completion_only_loss=True, packing=False)
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft_dataset(rows),
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
        callbacks=[metrics_callback(cfg.output_dir)],
    )
    train(trainer, cfg)
    finish(trainer, cfg, spec, "sft")
    print(f"prefopt sft: {'model' if cfg.full else 'adapter'} saved to {cfg.output_dir}")
