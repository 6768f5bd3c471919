"""One dataclass per stage holds every setting with its default and help text; this module turns it into
CLI flags, fills it from ``--config file.yaml`` and flags, and saves the resolved copy into the run dir.

A field ``learning_rate`` becomes ``--learning-rate``; ``argument=True`` makes it positional. A setting is one of
three kinds:

- a flag (the default);
- config-only (``config_only=True``): set at the top level of the ``--config`` YAML file; ``--help`` names
  these settings in one line at its end;
- experimental (``experimental=True``): a knob that only an experiment needs (experiments/), set under an
  ``experimental:`` block of the YAML file, and not listed by ``--help``.

Flags override the YAML file, which overrides the defaults. The training settings shared by ``sft`` and
``dpo`` are declared once, in :class:`TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import platform
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml

from prefopt.errors import PrefoptError, disk_fault

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"


EXPERIMENTAL = "experimental"


def opt(default: Any, help: str, **metadata: Any) -> Any:
    """A config field with its default and help text; metadata: argument, greedy, config_only, experimental,
    aliases (hidden extra flag names)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


# Settings several commands take: one name, one meaning, one help text (a command may change the default).
SHARED = {
    "strict": (False, "Exit 2 when any data row is rejected (default: set it aside with its reason in "
                      "rejects.jsonl and go on).", {"config_only": True}),
    "trust_remote_code": (False, "Run Python code shipped with a model or tokenizer (off: never).",
                          {"config_only": True}),
    "precision": ("auto", "auto (bf16 on a GPU that has it, else fp32), bf16, fp16 or fp32.", {}),
    "max_length": (None, "Max tokens of prompt + completion; longer rows are rejected.", {}),
    "tokenizer": (None, "Tokenizer that counts --max-length: a model name, path or prefopt run dir (default: a "
                        "word/punctuation proxy). Only the tokenizer loads.", {}),
    "template_dir": (None, "Directory overriding the templates of data_templates/, file by file.", {"config_only": True}),
    "quote_match": ("text", "Quote verification: text (verbatim up to whitespace) or words (ignores case and "
                            "punctuation).", {"config_only": True}),
    "near_dup": (0.9, "Word 3-shingle Jaccard at which a question or row is a near duplicate (0: exact duplicates "
                      "only).", {"config_only": True}),
}


def shared(name: str, default: Any = dataclasses.MISSING, help: str = "", **metadata: Any) -> Any:
    """The field of a setting several commands take (SHARED); `help` is appended to its help text."""
    base_default, base_help, base_meta = SHARED[name]
    return opt(base_default if default is dataclasses.MISSING else default, f"{base_help} {help}".strip(),
               **{**base_meta, **metadata})


def choice(value: Any, name: str, allowed: typing.Iterable[Any], flag: bool = True) -> None:
    """A clear error unless `value` is one of `allowed`; `name` is shown as its flag, or as it is (`flag=False`:
    a setting of the --config file)."""
    allowed = list(allowed)
    if value not in allowed:
        shown = f"--{name.replace('_', '-')}" if flag else name
        raise PrefoptError(f"{shown}: {value!r} is not one of {', '.join(map(str, allowed))}")


@dataclass
class TrainConfig:
    """Settings shared by `prefopt sft` and `prefopt dpo`."""

    INTERRUPTED = ("The checkpoints saved so far (--save-steps) are in {output_dir}; the same command with --resume "
                   "continues from the last one.")

    model: str = opt("smollm2-135m", "Base model: Hub id, local path, `smollm2-135m` (bundled), or a prefopt run dir.")
    data: str = opt("", "Preference triples (JSONL/Parquet) from `prefopt collect`.")
    output_dir: str = opt("runs/out", "Run directory: adapter, tokenizer, config.yaml, run.json, metrics.jsonl.")
    max_steps: int = opt(-1, "Stop after this many optimizer steps (-1: run --epochs).")
    epochs: float = opt(1.0, "Passes over the data.")
    seed: int = opt(42, "Random seed.")
    batch_size: int = opt(4, "Per-device batch size.")
    gradient_accumulation_steps: int = opt(1, "Micro-batches per optimizer step.")
    learning_rate: float = opt(2e-4, "Peak learning rate (linear decay, 3% warmup).")
    max_length: Optional[int] = shared("max_length", help="Default: the --model run's, else 2048.")
    lora_r: int = opt(16, "LoRA rank.")
    lora_alpha: int = opt(32, "LoRA alpha.")
    lora_dropout: float = opt(0.0, "LoRA dropout.", config_only=True)
    lora_targets: str = opt("all-linear", "Modules to adapt: `all-linear` or comma-separated names.", config_only=True)
    lora_rank_pattern: str = opt("", "Other ranks for some modules, `name=rank,...` (peft's rank_pattern; e.g. "
                                     "q_proj=64,k_proj=64); their alpha keeps lora_alpha / lora_r.", experimental=True)
    logging_steps: int = opt(1, "Log metrics every N steps (to metrics.jsonl).", config_only=True)
    save_steps: int = opt(0, "Save a checkpoint every N steps (0: only at the end).")
    deepspeed: Optional[str] = opt(None, "DeepSpeed config: zero2, zero3, zero3_offload, or a JSON path.")
    gradient_checkpointing: bool = opt(False, "Recompute activations in backward to save memory.")
    num_processes: int = opt(1, "Processes (GPUs) to train on: N > 1 re-launches under the DeepSpeed launcher.")
    full: bool = opt(False, "Full fine-tuning instead of a LoRA adapter.")
    qlora: bool = opt(False, "QLoRA: the frozen base in 4-bit NF4 (needs a CUDA GPU and bitsandbytes).")
    merge: bool = opt(False, "Also write the merged model (base + adapters) to OUTPUT_DIR/merged.", config_only=True)
    resume: bool = opt(False, "Continue from the latest complete checkpoint in --output-dir.")
    precision: str = shared("precision")
    attn_implementation: Optional[str] = opt(None, "Attention kernel: sdpa, flash_attention_2, eager (default: "
                                                   "transformers').", config_only=True)
    report_to: str = opt("none", "Also log to: tensorboard, wandb (comma-separated), or none.", config_only=True)
    strict: bool = shared("strict")
    trust_remote_code: bool = shared("trust_remote_code")

    def __post_init__(self) -> None:
        if not self.data:
            raise PrefoptError("--data is required: a preference JSONL/Parquet file from `prefopt collect`")
        for name in ("batch_size", "gradient_accumulation_steps", "lora_r"):
            if getattr(self, name) < 1:
                raise PrefoptError(f"--{name.replace('_', '-')} must be >= 1")
        if self.logging_steps < 1:
            raise PrefoptError("logging_steps must be >= 1")
        if self.learning_rate <= 0:
            raise PrefoptError("--learning-rate must be > 0")
        if not 0 <= self.lora_dropout < 1:
            raise PrefoptError("lora_dropout must be in [0, 1)")
        choice(self.precision, "precision", ("auto", "bf16", "fp16", "fp32"))
        if self.full and self.qlora:
            raise PrefoptError("--full and --qlora exclude each other (QLoRA trains an adapter)")
        rank_pattern(self.lora_rank_pattern)


def rank_pattern(spec: str) -> dict[str, int]:
    """`name=rank,...` as a dict, or a clear error."""
    out = {}
    for item in filter(None, (i.strip() for i in spec.split(","))):
        name, _, rank = item.partition("=")
        if not name.strip() or not rank.strip().isdigit() or int(rank) < 1:
            raise PrefoptError(f"lora_rank_pattern: {item!r} is not name=rank (a rank >= 1)")
        out[name.strip()] = int(rank)
    return out


# ---------------------------------------------------------------- loading and saving


def kind(f: dataclasses.Field) -> str:
    """How a field is set: "flag", "config" (top level of the --config file) or "experimental"."""
    if f.metadata.get(EXPERIMENTAL):
        return EXPERIMENTAL
    return "config" if f.metadata.get("config_only") else "flag"


class _SettingsLoader(yaml.SafeLoader):
    """YAML for a settings file: no anchors or aliases (a few lines of them expand to billions of values) and no
    key given twice (plain YAML keeps the last one without a word)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: anchors and aliases (&name, *name) are not allowed in a "
                                 "settings file")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key, _ in node.value:
            name = self.construct_object(key, deep=True)
            if name in seen:
                raise yaml.YAMLError(f"line {key.start_mark.line + 1}: {name!r} is given twice (first on line "
                                     f"{seen[name]})")
            seen[name] = key.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_settings(path: Path):
    """The parsed YAML of a settings file; a file that is not UTF-8 or not valid YAML is a one-line error."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_SettingsLoader) or {}
    except UnicodeDecodeError as e:
        raise PrefoptError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except yaml.YAMLError as e:
        raise PrefoptError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None


def load_config(cls: type, path: str | Path | None = None, overrides: dict | None = None):
    """Defaults < YAML file < explicit overrides (None means 'not given'). In the file, experimental settings
    sit under an `experimental:` block and every other setting at the top level."""
    fields = {f.name: kind(f) for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    where = str(path or "config")
    if path:
        path = Path(path)
        if not path.is_file():
            raise PrefoptError(f"{path}: no such config file")
        loaded = read_settings(path)
        if not isinstance(loaded, dict):
            raise PrefoptError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        block = loaded.pop(EXPERIMENTAL, None) or {}
        if not isinstance(block, dict):
            raise PrefoptError(f"{path}: `experimental:` must be a mapping of settings")
        misplaced = sorted(k for k in loaded if fields.get(k) == EXPERIMENTAL)
        if misplaced:
            raise PrefoptError(f"{path}: {', '.join(misplaced)}: experimental; set under `experimental:`")
        unknown = sorted(k for k in block if fields.get(k) != EXPERIMENTAL)
        if unknown:
            known = sorted(k for k, v in fields.items() if v == EXPERIMENTAL)
            raise PrefoptError(f"{path}: unknown experimental setting(s) {', '.join(unknown)}; known: "
                               f"{', '.join(known) or 'none'}")
        values.update(loaded)
        values.update(block)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(values) - set(fields) | set(overrides) - set(fields))
    if unknown:
        known = sorted(k for k, v in fields.items() if v != EXPERIMENTAL)
        raise PrefoptError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
    values = {k: typed(f"{path}: {k}", v, hints[k]) for k, v in values.items()}
    values.update({k: typed("--" + k.replace("_", "-"), v, hints[k]) for k, v in overrides.items()})
    try:
        return cls(**values)
    except TypeError as e:
        raise PrefoptError(f"{where}: {e}") from None


def typed(name: str, value: Any, tp: Any) -> Any:
    """`value` as the type `tp` of the setting `name` (as the user wrote it: `--flag` or `FILE: key`), or a one-line
    error naming both: a number written as text in YAML (``1e-4``) becomes the number; every number is finite."""
    import math

    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if value is None and type(None) in typing.get_args(tp):
        return None
    if typing.get_origin(tp) is list:
        value = list(value) if isinstance(value, (list, tuple)) else [value]
        return [typed(name, v, args[0]) for v in value]
    if args:  # Optional[X]
        tp = args[0]
    expected = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(tp, str(tp))
    bad = PrefoptError(f"{name}: {value!r} is not {expected}")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp in (int, float):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                value = tp(value.strip())
            except ValueError:
                raise bad from None
        if tp is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, (int, float)) or (tp is int and not isinstance(value, int)):
            raise bad
        if not math.isfinite(value):
            raise PrefoptError(f"{name}: {value!r} is not a finite number")
        return tp(value)
    if tp is str and not isinstance(value, str):
        raise bad
    return value


def config_dict(cfg: Any) -> dict:
    """The settings as the --config file takes them: experimental ones under `experimental:`."""
    out, block = {}, {}
    for f in dataclasses.fields(cfg):
        (block if kind(f) == EXPERIMENTAL else out)[f.name] = getattr(cfg, f.name)
    if block:
        out[EXPERIMENTAL] = block
    return out


def write_config(cfg: Any, path: str | Path) -> None:
    """The resolved settings as a YAML file that --config loads back."""
    from prefopt.data import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config_dict(cfg), sort_keys=False))


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("prefopt", "torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "datasets"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is simply not reported
            pass
    if "sentence_transformers" in sys.modules:  # where the stage used it (prefopt retriever); not imported for this
        out["sentence_transformers"] = getattr(sys.modules["sentence_transformers"], "__version__", "?")
    return out


SECRET_ENV = ("TOKEN", "KEY", "SECRET", "PASSWORD")


def redact(values: list[str]) -> list[str]:
    """Strings with the value of any secret-looking environment variable (HF_TOKEN, OPENAI_API_KEY, ...) masked."""
    import os

    secrets = [v for k, v in os.environ.items() if any(w in k.upper() for w in SECRET_ENV) and len(v) >= 8]
    out = []
    for value in values:
        for secret in secrets:
            value = value.replace(secret, "***")
        out.append(value)
    return out


def save_run(cfg: Any, run_dir: str | Path, stage: str, **info: Any) -> None:
    """Write the resolved config (loadable with --config) and run.json (stage, lineage, versions)."""
    from prefopt.data import write_text_atomic

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir / CONFIG_FILE)
    # run.json is the completion marker of a run dir: written last, under a temporary name, then renamed
    record = {"stage": stage, **info, "argv": redact(sys.argv), "versions": versions()}
    write_text_atomic(run_dir / RUN_FILE, json.dumps(record, indent=2) + "\n")


def read_config(run_dir: str | Path) -> dict:
    """The resolved settings a run dir saved (config.yaml, the experimental block flattened), or {} when it has
    none."""
    p = Path(run_dir) / CONFIG_FILE
    if not p.is_file():
        return {}
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        values = f"not valid YAML ({str(e).splitlines()[0][:100]})"
    if not isinstance(values, dict):
        why = values if isinstance(values, str) else f"expected a mapping, got {type(values).__name__}"
        raise PrefoptError(f"{p}: corrupt run settings: {why}; restore it or rerun the stage that wrote it")
    return {**values, **(values.pop(EXPERIMENTAL, None) or {})}


def read_run(run_dir: str | Path) -> dict | None:
    """run.json of a prefopt run dir, or None when the path is not one."""
    p = Path(run_dir) / RUN_FILE
    if not p.is_file():
        return None
    try:
        run = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        run = None
    if not isinstance(run, dict) or "stage" not in run:
        raise PrefoptError(f"{p}: incomplete or corrupt run.json (the run was interrupted while saving?); "
                           "rerun the stage with --resume to finish it")
    return run


# ---------------------------------------------------------------- CLI generation


def _cli_type(tp: Any) -> Any:
    """Optional[X] for the signature, since every flag defaults to None ('not given')."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    return Optional[tp]


def _with_default(help_text: str, default: Any, flag: str) -> str:
    """Help text with `[default: ...]` (the flags' own defaults are None, meaning 'not given')."""
    if isinstance(default, bool):
        shown = flag[2:] if default else f"no-{flag[2:]}"
    elif isinstance(default, (list, tuple)):
        shown = " ".join(map(str, default))
    else:
        shown = "" if default is None else str(default)
    return f"{help_text}  [default: {shown}]" if shown else help_text


def command(app: typer.Typer, name: str, cls: type, target: str, state: dict, group: str = "") -> None:
    """Register `name` on `app` (the `group` subcommand, if any): flags generated from `cls`, then `target`
    ('module:function') runs the config."""
    hints = typing.get_type_hints(cls)
    params = [
        inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[Optional[Path], typer.Option("--config", help="YAML file of settings; flags override it.")],
        )
    ]
    aliases: dict[str, str] = {}  # hidden parameter -> field
    for f in dataclasses.fields(cls):
        if kind(f) != "flag":
            continue
        help_text = f.metadata.get("help", "")
        if f.metadata.get("argument"):
            info = typer.Argument(help=help_text, show_default=False)
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            flag = "--" + f.name.replace("_", "-")
            decls = [f"{flag}/--no-{flag[2:]}"] if hints[f.name] is bool else [flag]
            info = typer.Option(*decls, help=_with_default(help_text, default, flag), show_default=False,
                                metavar=None if hints[f.name] is bool else f.name.upper())
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[_cli_type(hints[f.name]), info]))
        for alias in f.metadata.get("aliases", ()):
            key = "alias_" + alias.lstrip("-").replace("-", "_")
            aliases[key] = f.name
            params.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
                _cli_type(hints[f.name]), typer.Option(alias, hidden=True, help=f"Same as --{f.name.replace('_', '-')}.")]))

    # A `greedy` list field also takes the bare values after its flag: `--models a b c`.
    greedy = next((f.name for f in dataclasses.fields(cls) if f.metadata.get("greedy")), None)
    if greedy:
        params.insert(0, inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

    def callback(**kwargs: Any) -> None:
        cfg_path = kwargs.pop("config")
        ctx = kwargs.pop("ctx", None)
        for key, field_name in aliases.items():
            value = kwargs.pop(key)
            if value is not None and kwargs.get(field_name) is None:
                kwargs[field_name] = value
        if ctx is not None and ctx.args:
            if kwargs.get(greedy) is None:
                raise typer.BadParameter(f"unexpected arguments {ctx.args}")
            kwargs[greedy] = list(kwargs[greedy]) + list(ctx.args)
        try:
            cfg = load_config(cls, cfg_path, kwargs)
            module, func = target.split(":")
            getattr(importlib.import_module(module), func)(cfg)
        except PrefoptError as e:
            if state.get("debug"):
                raise
            typer.secho(f"error: {e}", err=True, fg="red")
            raise typer.Exit(2) from None
        except Exception as e:  # a full or read-only disk is an environment fault, not a bug
            why = disk_fault(e)
            if why is None or state.get("debug"):
                raise
            typer.secho(f"error: {why}", err=True, fg="red")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:  # Ctrl-C / SIGINT: say what was kept
            kept = getattr(cls, "INTERRUPTED", "").format(output_dir=kwargs.get("output_dir") or "the output dir")
            label = " ".join(x for x in ("prefopt", group, name) if x)
            typer.secho(f"{label}: interrupted. {kept}".strip(), err=True, fg="yellow")
            raise typer.Exit(130) from None

    callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    callback.__name__ = name.replace("-", "_")
    settings = {"allow_extra_args": True} if greedy else {}
    in_file = [f.name for f in dataclasses.fields(cls) if kind(f) == "config"]
    epilog = (f"Settings of the --config file only (YAML, top level): {', '.join(in_file)}." if in_file else None)
    app.command(name, help=(cls.__doc__ or "").strip(), epilog=epilog, context_settings=settings)(callback)
