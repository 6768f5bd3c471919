"""What `prefopt sft` and `prefopt dpo` share: TRL arguments from a TrainConfig, metrics logging, saving."""

from __future__ import annotations

import json
import sys
from importlib.resources import files
from pathlib import Path

from prefopt.config import TrainConfig, save_run
from prefopt.errors import PrefoptError
from prefopt.models import ModelSpec
from prefopt.rundir import digest

DS_CONFIGS = Path(str(files("prefopt.ds_configs")))  # ds_configs/ of the repo, shipped in the wheel
DEFAULT_MAX_LENGTH = 2048  # collect rag's default too


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


def load_policy(cfg: TrainConfig, spec: ModelSpec):
    """The model to train (the chain merged): in the training precision with --full, a 4-bit base with --qlora."""
    from prefopt.models import load_model

    return load_model(spec, model_dtype(cfg) if cfg.full else None, cfg.attn_implementation, cfg.trust_remote_code,
                      four_bit=cfg.qlora)


IDENTITY = "prefopt_run.json"  # in each checkpoint: the settings and the data it was trained with
NOT_COMPARED = {"resume", "output_dir", "save_steps", "logging_steps", "report_to", "strict", "trust_remote_code",
                "merge"}  # what a resumed run may change


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest checkpoint-N whose trainer_state.json and prefopt_run.json (written last) are complete."""
    found = []
    for path in Path(run_dir).glob("checkpoint-*"):
        try:
            for name in ("trainer_state.json", IDENTITY):
                json.loads((path / name).read_text())
            found.append((int(path.name.split("-")[1]), str(path)))
        except (OSError, ValueError, IndexError):
            continue  # killed while saving: not complete
    return max(found)[1] if found else None


def run_identity(cfg: TrainConfig) -> dict:
    """The settings a checkpoint's training depends on, and the sha1 of the data file."""
    import dataclasses

    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_COMPARED}
    return {"settings": json.loads(json.dumps(settings)), "data": digest(cfg.data)}


def check_resume(checkpoint: str, cfg: TrainConfig, ident: dict) -> None:
    """A one-line error when the checkpoint was trained with other settings or another data file."""
    saved = json.loads((Path(checkpoint) / IDENTITY).read_text())
    changed = [f"{k} {saved['settings'].get(k)!r} -> {v!r}" for k, v in ident["settings"].items()
               if saved["settings"].get(k) != v]
    if saved.get("data") != ident["data"]:
        changed.append(f"data: {cfg.data} is not the file it trained on")
    if changed:
        raise PrefoptError(f"--resume: {checkpoint} was trained with other settings ({'; '.join(changed)}); resume "
                           "with the settings it had, or start the new run in another --output-dir")


def identity_callback(ident: dict):
    """A TrainerCallback that records `ident` in every checkpoint, after the Trainer wrote it."""
    from transformers import TrainerCallback

    from prefopt.data import write_text_atomic

    class IdentityCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / IDENTITY
                write_text_atomic(path, json.dumps(ident, indent=1) + "\n")

    return IdentityCallback()


def train(trainer, cfg: TrainConfig) -> None:
    """trainer.train(), from the latest complete checkpoint with --resume (refused when its settings or data
    differ from this run's)."""
    ident = run_identity(cfg)
    trainer.add_callback(identity_callback(ident))
    checkpoint = latest_checkpoint(cfg.output_dir) if cfg.resume else None
    if cfg.resume and checkpoint is None:
        print(f"prefopt: --resume: no complete checkpoint in {cfg.output_dir}; starting from the beginning")
    elif checkpoint:
        check_resume(checkpoint, cfg, ident)
        print(f"prefopt: resuming from {checkpoint}")
    if sys.stderr.isatty():  # rich progress in a terminal; tqdm's plain lines in logs
        from transformers.trainer_callback import ProgressCallback
        from trl.trainer.callbacks import RichProgressCallback

        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(RichProgressCallback())
    trainer.train(resume_from_checkpoint=checkpoint)


def head_on_completions_only() -> None:
    """Make TRL's fused LM head project only the positions that are scored (completion tokens) on a CPU too.

    TRL 1.16's trainers return per-token log-probs through `add_fused_lm_head`, which projects only the positions
    whose label is not -100 where Triton runs (CUDA, XPU) and every position elsewhere, so that a compiled device
    (Neuron) keeps its tile shapes. On a CPU that spends a head's projection (49 k x 576 on SmolLM2) and its
    backward on every prompt token, which in a RAG prompt are nearly 9 tokens of 10. The gate is one name in
    trl.trainer.utils, read only there; the CPU kernel is unchanged."""
    import trl.trainer.utils as trl_utils

    gate = getattr(trl_utils, "_use_triton", None)
    if gate is None or hasattr(gate, "trl_gate"):  # a TRL without that gate keeps its own behaviour; wrapped already
        return

    def compact(device) -> bool:
        return device.type == "cpu" or gate(device)

    compact.trl_gate = gate
    trl_utils._use_triton = compact


def trl_args(cfg: TrainConfig, spec: ModelSpec) -> dict:
    """Keyword arguments common to trl.SFTConfig and trl.DPOConfig (and a working CPU multi-process backend)."""
    import warnings

    import torch

    from prefopt.launch import prepare_rank

    prepare_rank()
    head_on_completions_only()
    # transformers 5.23 renames gradient_checkpointing (which TRL 1.16 still reads) and warns on every use
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing. is deprecated", category=FutureWarning)

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
        # always explicit: TRL 1.16's SFTConfig/DPOConfig default to True, which costs ~1/3 more compute per step
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_nan_inf_filter=False,  # a non-finite loss is logged as it is, and stops the run (metrics_callback)
    )


def metrics_callback(run_dir: str, first_step: int = 0, round_: int | None = None):
    """A TrainerCallback that appends each log (loss, rewards/..., logps/...) to run_dir/metrics.jsonl, and stops
    the run with a one-line error at the first non-finite loss (it is then never marked complete). A trainer that
    continues a run (dpo's later rounds) numbers its steps from `first_step` and tags its lines with `round_`."""
    from transformers import TrainerCallback

    path = Path(run_dir) / "metrics.jsonl"

    class MetricsCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            # a resumed run keeps the lines up to its checkpoint and drops those logged after it
            kept = [line for line in (path.read_text().splitlines() if path.is_file() else [])
                    if json.loads(line).get("step", 0) <= first_step + state.global_step]
            path.write_text("".join(line + "\n" for line in kept))

        def on_log(self, args, state, control, logs=None, **kwargs):
            import math

            if state.is_world_process_zero and logs:
                with path.open("a") as f:
                    tag = {} if round_ is None else {"round": round_}
                    f.write(json.dumps({"step": first_step + state.global_step, **tag, **logs}) + "\n")
            # every rank logs the same values, so every rank stops; fp16's loss scaler skips steps whose gradient
            # overflowed (grad_norm inf), so only the loss counts there
            for key in ("loss",) if args.fp16 else ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if isinstance(value, float) and not math.isfinite(value):
                    raise PrefoptError(f"step {state.global_step}: {key} is {value}: training diverged; the run stops "
                                       "unfinished (lower --learning-rate, or check the data)")

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


def preflight(output_dir: str | Path, need_bytes: int) -> None:
    """Fail before training when the output dir cannot be written (a probe file is written, fsynced and removed)
    or its disk has less free space than a rough estimate of what the run writes."""
    import os
    import shutil

    out = Path(output_dir)
    probe = out / f".prefopt-probe-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise PrefoptError(f"--output-dir {out}: not writable ({e.strerror or e}); expected a directory prefopt "
                           "can create and write to") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise PrefoptError(f"--output-dir {out}: {free / 2**20:.0f} MiB free, the run needs about "
                           f"{need_bytes / 2**20:.0f} MiB (adapter or weights, checkpoints, optimizer state); free "
                           "some space or choose another --output-dir")


def estimate_bytes(cfg: TrainConfig, spec: ModelSpec) -> int:
    """What a run writes, roughly: with --full the weights plus, per kept checkpoint, weights and two Adam moments;
    with LoRA a small fraction of that. The base weights' size is measured when they are a local dir."""
    base = Path(spec.base)
    weights = sum(f.stat().st_size for f in base.glob("*.safetensors")) if base.is_dir() else 0
    weights = weights or 500 * 2**20  # a Hub id: assume a small model
    per_save = 3 * weights if cfg.full else weights // 20
    saves = 1 + (2 if cfg.save_steps else 0)
    return 64 * 2**20 + per_save * saves


def prepare(cfg: TrainConfig, kind: str):
    """Everything that can fail before the weights load, in seconds: the data file (file-level problems are an
    error), --model, the output dir (preflight), the tokenizer, then each row (bad or longer than --max-length
    by the tokenizer's count: to OUTPUT_DIR/rejects.jsonl). Returns (spec, tokenizer, usable rows)."""
    from prefopt.data import check_file, limit_length, main_process, report, sft_rows
    from prefopt.models import load_tokenizer, resolve
    from prefopt.rundir import lock_output_dir

    checked = check_file(cfg.data, kind)
    spec = resolve(cfg.model)
    refuse_inputs(cfg.output_dir, [cfg.data, spec.base, spec.tokenizer, *spec.adapters])
    preflight(cfg.output_dir, estimate_bytes(cfg, spec))
    lock_output_dir(cfg.output_dir)
    tokenizer = load_tokenizer(spec, cfg.trust_remote_code)
    limit_length(checked, max_length(cfg, spec), tokenizer)
    report(checked, Path(cfg.output_dir) / "rejects.jsonl", cfg.strict)
    # a new run starts here: an older run's completion marker must not vouch for this dir until it finishes
    if main_process():
        (Path(cfg.output_dir) / "run.json").unlink(missing_ok=True)
    return spec, tokenizer, sft_rows(checked.kept) if kind == "sft" else checked.kept


def refuse_inputs(output_dir: str, inputs: list[str]) -> None:
    """A one-line error when the output dir is, or holds, one of the run's inputs (the data file, the --model
    dir or a run of its lineage): the run would overwrite what it reads."""
    out = Path(output_dir).resolve()
    for name in inputs:
        path = Path(name).expanduser()
        if path.exists() and (path.resolve() == out or out in path.resolve().parents):
            raise PrefoptError(f"--output-dir {output_dir}: holds an input of this run ({name}), which the run would "
                               "overwrite; choose another --output-dir")


def finish(trainer, cfg: TrainConfig, spec: ModelSpec, stage: str, **info) -> None:
    """Save the adapter (or full weights) + tokenizer, config.yaml and run.json (lineage: base model and
    parent run), the training curves and, with --merge, the merged model in OUTPUT_DIR/merged.

    Atomic: everything is saved into OUTPUT_DIR/.tmp-final, then moved into place, and run.json, the completion
    marker that `--model RUN_DIR` requires, is written last; a run killed on the way leaves no run.json."""
    import os
    import shutil

    out = Path(cfg.output_dir)
    tmp = out / ".tmp-final"
    if trainer.accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # an older run's marker went when this run started (prepare)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # every rank: ZeRO-3 gathers the weights
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(str(tmp))
        for f in sorted(tmp.iterdir()):
            if f.is_file():
                os.replace(f, out / f.name)
        shutil.rmtree(tmp, ignore_errors=True)
        plot_curves(cfg.output_dir)
        save_run(cfg, cfg.output_dir, stage, base_model=spec.base, weights="full" if cfg.full else "adapter",
                 parent=spec.name if spec.run else None, max_length=trainer.args.max_length, **info)
    trainer.accelerator.wait_for_everyone()
    if cfg.merge and not cfg.full and trainer.accelerator.is_main_process:
        from prefopt.models import load_model, load_tokenizer, resolve

        merged, merged_tmp = out / "merged", out / ".tmp-merged"
        shutil.rmtree(merged_tmp, ignore_errors=True)
        load_model(resolve(cfg.output_dir), trust_remote_code=cfg.trust_remote_code).save_pretrained(merged_tmp)
        load_tokenizer(resolve(cfg.output_dir), cfg.trust_remote_code).save_pretrained(merged_tmp)
        shutil.rmtree(merged, ignore_errors=True)
        os.replace(merged_tmp, merged)
        print(f"prefopt: merged model written to {merged}")
