"""`prefopt dpo`: DPO/IPO (any TRL loss type) of a fresh LoRA adapter on top of the SFT model.

The SFT adapter is merged into the base weights and a new adapter is trained on top, so disabling the new
adapter gives exactly the SFT model: that is the reference, with no second copy in memory, and at step 0 the
policy equals the reference (sigmoid loss = ln 2, IPO loss = (1/(2β))²).
"""

from __future__ import annotations

from dataclasses import dataclass

from prefopt.config import TrainConfig, opt
from prefopt.errors import PrefoptError

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


@dataclass
class DPOConfig(TrainConfig):
    """Preference optimization (DPO, IPO, ...) of a LoRA adapter against the SFT model as reference."""

    loss: str = opt("sigmoid", "TRL loss type(s), comma-separated to combine: sigmoid, ipo, hinge, robust, ... "
                               "(TRL's IPO averages log-probs per token).")
    beta: float = opt(0.1, "β: the strength of the pull towards the reference.")
    label_smoothing: float = opt(0.0, "Label smoothing for robust / exo_pair.")
    learning_rate: float = opt(5e-5, "Peak learning rate (linear decay, 3% warmup).")

    def __post_init__(self) -> None:
        super().__post_init__()
        for loss in self.losses:
            if loss not in LOSS_TYPES:
                raise PrefoptError(f"--loss: {loss!r} is not one of {', '.join(LOSS_TYPES)}")
        if self.beta <= 0:
            raise PrefoptError("--beta must be > 0")

    @property
    def losses(self) -> list[str]:
        return [loss.strip() for loss in self.loss.split(",") if loss.strip()]


def run(cfg: DPOConfig) -> None:
    from prefopt.data import dpo_dataset, load_preferences

    rows = load_preferences(cfg.data)  # bad data fails before the model loads
    from prefopt.launch import relaunch

    if relaunch(cfg, "dpo"):
        return

    import trl

    from prefopt.models import load_model, load_tokenizer, lora_config, resolve
    from prefopt.train import finish, metrics_callback, trl_args

    spec = resolve(cfg.model)  # an SFT run dir: its base, tokenizer, chat template and max length
    tokenizer = load_tokenizer(spec)
    # SFT adapter merged: the reference once the new adapter is disabled. Loaded before the TRL config, since
    # under ZeRO-3 that would partition the load and break the merge.
    model = load_model(spec)
    args = trl.DPOConfig(**trl_args(cfg, spec), loss_type=cfg.losses, beta=cfg.beta,
                         label_smoothing=cfg.label_smoothing)
    trainer = trl.DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=dpo_dataset(rows),
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
        callbacks=[metrics_callback(cfg.output_dir)],
    )
    trainer.train()
    finish(trainer, cfg, spec, "dpo")
    print(f"prefopt dpo: adapter saved to {cfg.output_dir}")
