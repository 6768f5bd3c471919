"""`prefopt sft`: supervised fine-tuning (LoRA by default) on the chosen answers, with the loss on them alone."""

from __future__ import annotations

from dataclasses import dataclass

from prefopt.config import TrainConfig, opt


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning on the chosen side of preference triples, or on chat `messages` rows."""

    learning_rate: float = opt(1e-3, "Peak learning rate (linear decay, 3% warmup).")
    epochs: float = opt(2.0, "Passes over the data.")
    both_orders: bool = opt(False, "Train every row twice: its documents as collected and in reverse order.",
                            experimental=True)


def run(cfg: SFTConfig) -> None:
    from prefopt.launch import relaunch
    from prefopt.raft import reverse_documents
    from prefopt.train import prepare

    spec, tokenizer, rows = prepare(cfg, "sft")  # bad data fails before the model loads
    if relaunch(cfg, "sft"):
        return
    if cfg.both_orders:  # each row next to its reversed copy
        rows = [r for row in rows for r in (row, reverse_documents(row))]
        print(f"prefopt sft: both_orders: {len(rows)} rows, each of {len(rows) // 2} also with its documents reversed")

    import trl

    from prefopt.data import sft_dataset
    from prefopt.models import lora_config
    from prefopt.train import finish, load_policy, metrics_callback, train, trl_args

    # loaded before the TRL config: under ZeRO-3 that would partition the load and break merging adapters
    model = load_policy(cfg, spec)
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
