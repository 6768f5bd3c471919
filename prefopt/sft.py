"""`prefopt sft`: supervised fine-tuning of a LoRA adapter on the chosen answers (loss on them alone)."""

from __future__ import annotations

from dataclasses import dataclass

from prefopt.config import TrainConfig, opt


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning (LoRA) on the chosen side of preference triples."""

    learning_rate: float = opt(1e-3, "Peak learning rate (linear decay, 3% warmup).")
    epochs: float = opt(2.0, "Passes over the data.")


def run(cfg: SFTConfig) -> None:
    from prefopt.data import load_preferences, sft_dataset

    rows = load_preferences(cfg.data)  # bad data fails before the model loads
    from prefopt.launch import relaunch

    if relaunch(cfg, "sft"):
        return

    import trl

    from prefopt.models import load_model, load_tokenizer, lora_config, resolve
    from prefopt.train import finish, metrics_callback, trl_args

    spec = resolve(cfg.model)
    tokenizer = load_tokenizer(spec)
    model = load_model(spec)  # before the TRL config: under ZeRO-3 that would partition the load and break merging
    args = trl.SFTConfig(**trl_args(cfg, spec), completion_only_loss=True, packing=False)
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft_dataset(rows),
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
        callbacks=[metrics_callback(cfg.output_dir)],
    )
    trainer.train()
    finish(trainer, cfg, spec, "sft")
    print(f"prefopt sft: adapter saved to {cfg.output_dir}")
