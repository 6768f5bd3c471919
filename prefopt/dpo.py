"""`prefopt dpo`: DPO/IPO (any TRL loss type) of a fresh LoRA adapter on top of the SFT model.

The SFT adapter is merged into the base weights and a new adapter is trained on top, so disabling the new
adapter gives exactly the SFT model: that is the reference, with no second copy in memory, and at step 0 the
policy equals the reference (sigmoid loss = ln 2, IPO loss = (1/(2β))²).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from prefopt.config import TrainConfig, choice, opt
from prefopt.errors import PrefoptError

REFS = ("implicit", "copy", "precomputed")
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


@dataclass
class DPOConfig(TrainConfig):
    """Preference optimization (DPO, IPO, ...) of a LoRA adapter against the SFT model as reference."""

    data: str = opt("", "Preference triples (JSONL/Parquet) from `prefopt collect` (default: the dpo.jsonl beside the "
                        "--model SFT run's data: collect's questions set apart for DPO).")
    epochs: float = opt(2.0, "Passes over the data.")
    loss: str = opt("sigmoid,sft", "TRL loss type(s), comma-separated to add them: sigmoid (DPO), ipo, hinge, robust, "
                                   "sft (the chosen answers' NLL), ...")
    beta: float = opt(0.1, "β: the strength of the pull towards the reference.")
    learning_rate: float = opt(5e-5, "Peak learning rate (linear decay, 3% warmup).")
    ref: str = opt("precomputed", "Reference: precomputed (its log-probs computed once before training, cached in "
                                  "the run dir), implicit (the SFT model = the new adapter disabled, run at every "
                                  "step), copy (a frozen second model).")
    on_policy: int = opt(4, "Sample up to N answers per prompt from the SFT model before training; the first that "
                            "quotes and answers wrong replaces the collected rejected answer (0: off). Costs N "
                            "generations per training row (docs/training.md).")
    sft_weight: float = opt(4.0, "Weight of the sft term where `loss` has one (TRL's loss_weights; every other term "
                                 "weighs 1).", config_only=True)
    label_smoothing: float = opt(0.0, "Label smoothing for robust / exo_pair.", config_only=True)
    hard_margin: float = opt(10.0, "Rows whose chosen answer the reference prefers by less than M nats of summed "
                                   "log-prob (after on_policy) are hard; hard_repeat says what to do with them "
                                   "(0: off).", config_only=True)
    hard_repeat: int = opt(2, "With hard_margin: every row once and the hard ones K times in all (0: the hard rows "
                              "only, once).", config_only=True)
    prefix_sharing: bool = opt(True, "Run each pair as one sequence, prompt + chosen + rejected with a block mask, "
                                     "so the prompt is computed once: the same log-probs as TRL's two rows (false), "
                                     "with about half the compute on RAG prompts (docs/training.md).", config_only=True)
    on_policy_quotes: bool = opt(False, "A sample that quotes anything not in the oracle is wrong too.",
                                 experimental=True)
    on_policy_grounded: bool = opt(True, "Only a wrong sample that quotes something counts, not an abstention.",
                                   experimental=True)
    on_policy_reversed: bool = opt(False, "A row answered right in all N samples gets N more with its documents "
                                          "reversed.", experimental=True)
    abstain_rows: bool = opt(False, "Also train on the rows whose prompt lacks the oracle (the chosen answer "
                                    "abstains).", experimental=True)
    on_policy_rounds: int = opt(1, "Rounds of on-policy DPO: sample from the current policy, judge, train 1/R of "
                                   "the epochs (or steps), repeat; the reference stays the SFT model.",
                                experimental=True)

    def __post_init__(self) -> None:
        if not self.data:
            self.data = inherited_data(self.model)
        super().__post_init__()
        for loss in self.losses:
            choice(loss, "loss", LOSS_TYPES)
        if self.sft_weight < 0:
            raise PrefoptError("sft_weight must be >= 0")
        if self.beta <= 0:
            raise PrefoptError("--beta must be > 0")
        choice(self.ref, "ref", REFS)
        if self.on_policy < 0:
            raise PrefoptError("--on-policy must be >= 0")
        if self.hard_repeat < 0:
            raise PrefoptError("hard_repeat must be >= 0")
        if self.full and self.ref == "implicit":
            raise PrefoptError("--ref implicit needs a LoRA adapter to disable; with --full use --ref copy or precomputed")
        if self.on_policy_rounds < 1:
            raise PrefoptError("on_policy_rounds must be >= 1")
        if self.rounds > 1 and (self.full or self.resume or self.num_processes > 1 or self.deepspeed):
            raise PrefoptError("on_policy_rounds > 1 runs a LoRA adapter in one process, without --resume (its "
                               "rounds keep no checkpoints)")

    @property
    def losses(self) -> list[str]:
        return [loss.strip() for loss in self.loss.split(",") if loss.strip()]

    @property
    def rounds(self) -> int:
        return self.on_policy_rounds if self.on_policy else 1

    @property
    def weights(self) -> list[float]:
        return [self.sft_weight if loss == "sft" else 1.0 for loss in self.losses]


def inherited_data(model: str) -> str:
    """The dpo.jsonl beside the data file of the SFT run dir `model`, or "" when there is none."""
    from pathlib import Path

    from prefopt.config import read_config
    from prefopt.models import resolve

    if not Path(model).is_dir():
        return ""
    resolve(model)  # an interrupted run dir is named as such, before "--data is required"
    sft_data = read_config(model).get("data")
    path = Path(sft_data).parent / "dpo.jsonl" if sft_data else None
    if path is None or not path.is_file():
        return ""
    print(f"prefopt dpo: --data {path} (beside the data of the SFT run {model})")
    return str(path)


def _dataset(rows: list[dict], cfg: DPOConfig):
    """The TRL dataset; with --ref precomputed it lives in the run dir, so TRL caches the reference log-probs
    there (keyed by data and model) and a rerun or --resume reuses them."""
    from prefopt.data import dpo_dataset, write_text_atomic

    if cfg.ref != "precomputed":
        return dpo_dataset(rows)
    import json
    from pathlib import Path

    from datasets import load_dataset

    cache = Path(cfg.output_dir) / "ref_cache"
    path = cache / "train.jsonl"
    text = "".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows)
    if not path.is_file() or path.read_text() != text:  # unchanged data keeps its fingerprint
        write_text_atomic(path, text)
    return load_dataset("json", data_files=str(path), cache_dir=str(cache), split="train")


def without_abstentions(rows: list[dict]) -> list[dict]:
    """The rows whose prompt shows the oracle (and every row without RAG metadata)."""
    from prefopt.data import shows_oracle

    kept = [r for r in rows if shows_oracle(r)]
    if len(kept) < len(rows):
        print(f"prefopt dpo: {len(rows) - len(kept)} of {len(rows)} rows have no oracle in the prompt (chosen: the "
              "abstention); left out")
    if not kept:
        raise PrefoptError("no row shows the oracle in its prompt (every chosen answer abstains): DPO needs rows "
                           "whose prompt holds the oracle")
    return kept


def training_rows(model, tokenizer, rows: list[dict], cfg: DPOConfig, steps: int, round_: int = 0) -> list[dict]:
    """The rows one round trains on: the collected ones with the current policy's own wrong answers as rejected
    (--on-policy), then the hard rows weighed (hard_margin, by the reference's margins). Round 0 samples from the
    SFT model; a later round from the policy trained so far (the adapter on), its files suffixed `_round{N}`."""
    import contextlib

    from prefopt.data import judgeable
    from prefopt.onpolicy import resample_rejected

    suffix = f"_round{round_ + 1}" if round_ else ""
    if cfg.on_policy and not any(judgeable(r) for r in rows):
        print("prefopt dpo: no row has a gold answer (meta.answer) and its oracle to judge samples by, so "
              "--on-policy is skipped: the collected rejected answers stay")
    elif cfg.on_policy:
        world = int(os.environ.get("WORLD_SIZE", cfg.num_processes))  # any launcher, or --num-processes
        need = steps * cfg.batch_size * cfg.gradient_accumulation_steps * world
        if 0 < need < len(rows):  # sample only for the rows --max-steps will train on
            rows = random.Random(cfg.seed + round_).sample(rows, need)
        rows = resample_rejected(model, tokenizer, rows, cfg.on_policy, cfg.output_dir, cfg.seed + round_,
                                 quotes=cfg.on_policy_quotes, grounded=cfg.on_policy_grounded,
                                 reversed_order=cfg.on_policy_reversed, name=f"on_policy{suffix}.jsonl")
    if cfg.hard_margin:
        from prefopt.hardrows import weigh_hard

        # the reference's margins: in a later round, the policy with its adapter disabled
        with model.disable_adapter() if round_ else contextlib.nullcontext():
            rows = weigh_hard(model, tokenizer, rows, cfg.hard_margin, cfg.hard_repeat, cfg.output_dir,
                              cfg.prefix_sharing, name=f"ref_margins{suffix}.jsonl")
    return rows


def run(cfg: DPOConfig) -> None:
    from prefopt.launch import relaunch
    from prefopt.train import prepare

    # bad data fails before the model loads; --model is an SFT run dir: its base, tokenizer, chat template, max length
    spec, tokenizer, collected = prepare(cfg, "preference")
    if not cfg.abstain_rows:
        collected = without_abstentions(collected)
    if relaunch(cfg, "dpo"):
        return

    import trl

    from prefopt.models import lora_config
    from prefopt.prefix import trainer_class
    from prefopt.train import finish, load_policy, metrics_callback, train, trl_args

    # The SFT adapter merged in: the reference once the new adapter is disabled. Loaded before the TRL config,
    # since under ZeRO-3 that would partition the load and break the merge.
    model = load_policy(cfg, spec)
    ref_model = load_policy(cfg, spec).eval() if cfg.ref == "copy" else None
    budget = {"num_train_epochs": cfg.epochs / cfg.rounds,  # each round its share of the epochs or steps
              "max_steps": -(-cfg.max_steps // cfg.rounds) if cfg.max_steps > 0 else -1}
    steps_done = 0
    for round_ in range(cfg.rounds):  # one round unless on_policy_rounds (experimental) says more
        rows = training_rows(model, tokenizer, collected, cfg, budget["max_steps"], round_)
        args = trl.DPOConfig(**{**trl_args(cfg, spec), **(budget if cfg.rounds > 1 else {})},
                             loss_type=cfg.losses, loss_weights=cfg.weights, beta=cfg.beta,
                             label_smoothing=cfg.label_smoothing, precompute_ref_log_probs=cfg.ref == "precomputed")
        if args.world_size > 1:  # rank 0's rows on every rank: GPUs' samples and margins need not agree to the
            from accelerate.utils import broadcast_object_list  # bit, and a row hard on one rank only would

            rows = broadcast_object_list([rows])[0]  # change the length
        trainer = trainer_class()(
            prefix_sharing=cfg.prefix_sharing,
            base_reference=round_ > 0,  # the reference stays the SFT model, not the adapter of the last round
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=_dataset(rows, cfg),
            processing_class=tokenizer,
            peft_config=lora_config(cfg) if round_ == 0 else None,  # a later round trains the same adapter on
            callbacks=[metrics_callback(cfg.output_dir, first_step=steps_done, round_=round_ + 1 if cfg.rounds > 1
                                        else None)],
        )
        train(trainer, cfg)
        model, steps_done = trainer.model, steps_done + trainer.state.global_step
        if "ref" in getattr(model, "peft_config", {}):  # the later rounds' frozen reference copy: not saved
            model.delete_adapter("ref")
    finish(trainer, cfg, spec, "dpo", ref=cfg.ref)
    print(f"prefopt dpo: {'model' if cfg.full else 'adapter'} saved to {cfg.output_dir}")
