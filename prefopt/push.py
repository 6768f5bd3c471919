"""`prefopt push`: upload a run's adapter (or merged weights), tokenizer, config and a model card to the
Hugging Face Hub, and optionally the collected data set to a dataset repo.

A DPO run's adapter was trained on base + SFT merged, so on its own it is not what DPO trained. prefopt
pushes one *combined* LoRA adapter instead: the chain's adapters (SFT, then DPO) concatenated along the rank,
with their scalings folded into B, whose update B·A equals the sum of theirs, so ``PeftModel.from_pretrained(
base, repo)`` gives exactly base + SFT + DPO (see :func:`combine_adapters`). ``--merge`` pushes full weights.

The token comes from HF_TOKEN or the cached `hf auth login`; huggingface_hub reads it, prefopt never does.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import yaml

from prefopt.config import CONFIG_FILE, RUN_FILE, opt, read_config, read_run
from prefopt.data import read_json
from prefopt.errors import PrefoptError
from prefopt.models import ADAPTER_CONFIG, ADAPTER_WEIGHTS, cache_dir, check_adapter, load_model, resolve

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")
RUN_FILES = (CONFIG_FILE, RUN_FILE, "metrics.jsonl", "curves.png", "eval.json", "eval.md", "eval.png")
FULL_WEIGHTS = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json")
DATA_FILES = ("train.jsonl", "dpo.jsonl", "test.jsonl", "train.parquet", "test.parquet", "rejects.jsonl", "card.json")
# the Hub ids of prefopt's bundled models (their local copies live in prefopt's cache)
BUNDLED_HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
UPLOAD = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, *TOKENIZER_FILES, *RUN_FILES)  # what an adapter push takes from a run dir
RETRIES, RETRY_WAIT = 4, 2.0  # attempts per Hub call, first wait in seconds (doubles)
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)


@dataclass
class PushConfig:
    """Push a run's LoRA adapter (a DPO run: combined with its SFT adapter) and tokenizer to the Hugging Face
    Hub with a model card; or merged full weights (--merge); optionally the data set (--dataset)."""

    run_dir: str = opt("", "The prefopt run dir (from sft or dpo) to upload.", argument=True)
    repo_id: str = opt("", "Target model repo, USER/NAME.")
    private: bool = opt(False, "Create the repo(s) as private.")
    revision: Optional[str] = opt(None, "Branch to commit to (default: main; created when missing).")
    commit_message: str = opt("Upload prefopt adapter", "Commit message.")
    merge: bool = opt(False, "Push merged full weights (base + every adapter of the chain) instead of the adapter.")
    dataset: Optional[str] = opt(None, "Also push this collected data dir (train/dpo/test.jsonl, card.json) to a dataset repo.")
    dataset_repo_id: Optional[str] = opt(None, "Dataset repo for --dataset (default: REPO_ID-data).")
    base_model: Optional[str] = opt(None, "Hub id to name as base_model (default: the run's, when it is a Hub id).")

    def __post_init__(self) -> None:
        if not self.run_dir or not self.repo_id:
            raise PrefoptError("push needs RUN_DIR and --repo-id USER/NAME")
        if self.repo_id.count("/") != 1 or not all(self.repo_id.split("/")):
            raise PrefoptError(f"--repo-id {self.repo_id}: expected USER/NAME")


# ---------------------------------------------------------------- what goes up


def hub_base_model(base: str, override: str | None = None) -> str | None:
    """The base model as a Hub id: the override, the Hub id of a bundled model's cached copy, the run's own
    value when it is not a local path; None when only a local path is known."""
    if override:
        return override
    path = Path(base).expanduser()
    for name, hub_id in BUNDLED_HUB_IDS.items():
        if base == name or (path.name == name and (path.parent == cache_dir() or path.parent.name == "prefopt")):
            return hub_id
    if base.startswith((".", "/", "~")) or path.exists():
        return None
    return base


def _load_adapter(run_dir: str | Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    check_adapter(run_dir)
    return load_file(Path(run_dir) / ADAPTER_WEIGHTS), read_json(Path(run_dir) / ADAPTER_CONFIG)


def combine_adapters(run_dirs: list[str | Path]) -> tuple[dict, dict]:
    """One LoRA adapter equal to applying the adapters of `run_dirs` in turn (each was trained on the previous
    ones merged into the base, so their weight updates add up): per module, A = [A_1; A_2; ...] and
    B = [s_1·B_1, s_2·B_2, ...] with s_i = alpha_i / r_i, rank = Σ r_i and alpha = rank (scaling 1), so
    B·A = Σ s_i·B_i·A_i exactly. A module only some adapters touch gets zero blocks from the others.
    Returns (state dict, adapter config)."""
    import torch

    loaded = [_load_adapter(d) for d in run_dirs]
    for d, (_, conf) in zip(run_dirs, loaded):
        if conf.get("peft_type", "LORA") != "LORA" or conf.get("use_dora") or conf.get("rank_pattern") \
                or conf.get("alpha_pattern") or conf.get("modules_to_save"):
            raise PrefoptError(f"{d}: the adapter is not a plain LoRA (DoRA, rank/alpha patterns or modules_to_save); "
                               "push it with --merge instead")
    ranks = [int(conf["r"]) for _, conf in loaded]
    scales = [conf["lora_alpha"] / (r ** 0.5 if conf.get("use_rslora") else r) for (_, conf), r in zip(loaded, ranks)]
    modules: dict[str, dict] = {}
    for k, (weights, _) in enumerate(loaded):
        for key, value in weights.items():
            for part in ("lora_A", "lora_B"):
                if key.endswith(f".{part}.weight"):
                    modules.setdefault(key[: -len(f".{part}.weight")], {})[(k, part)] = value
                    break
            else:
                raise PrefoptError(f"{run_dirs[k]}: unexpected adapter tensor {key}; push it with --merge instead")
    total = sum(ranks)
    out = {}
    for module, parts in modules.items():
        some_a = next(v for (_, p), v in parts.items() if p == "lora_A")
        some_b = next(v for (_, p), v in parts.items() if p == "lora_B")
        dtype = some_a.dtype
        blocks_a, blocks_b = [], []
        for k, r in enumerate(ranks):
            a, b = parts.get((k, "lora_A")), parts.get((k, "lora_B"))
            if a is None or b is None:
                a, b = torch.zeros(r, some_a.shape[1]), torch.zeros(some_b.shape[0], r)
            blocks_a.append(a.float())
            blocks_b.append(b.float() * scales[k])
        out[f"{module}.lora_A.weight"] = torch.cat(blocks_a, 0).to(dtype).contiguous()
        out[f"{module}.lora_B.weight"] = torch.cat(blocks_b, 1).to(dtype).contiguous()
    config = dict(loaded[-1][1])
    targets = [c.get("target_modules") for _, c in loaded]
    if all(isinstance(t, list) for t in targets):
        config["target_modules"] = sorted({m for t in targets for m in t})
    config.update(r=total, lora_alpha=total, use_rslora=False, rank_pattern={}, alpha_pattern={})
    return out, config


def find_data_card(train_cfg: dict, run_dir: Path) -> dict | None:
    """card.json next to the training data (the config's `data`), looked up from here and from the run dir."""
    data = train_cfg.get("data")
    if not data:
        return None
    for base in (Path("."), run_dir, run_dir.parent, run_dir.parent.parent):
        p = (base / data).parent / "card.json" if not Path(data).is_absolute() else Path(data).parent / "card.json"
        if p.is_file():
            try:
                return json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                return None
    return None


def data_summary(card: dict) -> list[str]:
    kept = card.get("kept") or {}
    rows = [("collector", card.get("command")), ("questions in", card.get("questions_in", card.get("in"))),
            ("kept (" + " / ".join(kept) + ")", " / ".join(str(v) for v in kept.values()) if kept else None),
            ("rejected", card.get("rejected")), ("distractors per prompt", card.get("distractors")),
            ("distractor source", card.get("distractor_source") or card.get("retriever")),
            ("oracle in context (train)", card.get("oracle_rate_train")),
            ("answer generator", card.get("generator_version") or card.get("generator"))]
    return [f"- {k}: {v}" for k, v in rows if v is not None]


def model_card(run: dict, cfg: dict, repo_id: str, *, base_model: str | None = None, data_card: dict | None = None,
               eval_results: dict | None = None, combined: int = 0, merged: bool = False,
               dataset_repo: str | None = None) -> str:
    """README.md of the model repo. `base_model`: the Hub id to name ('' leaves it out; default: the run's);
    `combined`: how many chained adapters were combined into the pushed one; `merged`: full weights."""
    stage = run["stage"]
    loss = str(cfg.get("loss") or "")
    tags = ["prefopt", "trl", stage] + ([] if merged else ["peft", "lora"])
    if stage == "dpo":
        tags.append("ipo" if "ipo" in loss else "dpo")
    base = hub_base_model(run["base_model"]) or run["base_model"] if base_model is None else base_model
    meta = {**({"base_model": base} if base else {}), "library_name": "transformers" if merged else "peft",
            "tags": tags, **({"datasets": [dataset_repo]} if dataset_repo else {})}
    shown_base = base or Path(run["base_model"]).name
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {repo_id}", ""]
    what = {"sft": "supervised fine-tuning (SFT)", "dpo": f"preference optimization ({loss or 'dpo'})"}.get(stage, stage)
    if merged and run.get("weights") == "full":
        lines.append(f"Full weights of a prefopt {what} run (full fine-tuning) starting from `{shown_base}`.")
    elif merged:
        lines.append(f"Full weights of `{shown_base}` with the LoRA adapter(s) of a prefopt {what} run merged in.")
    else:
        lines.append(f"A LoRA adapter trained with prefopt by {what} on `{shown_base}`.")
    if run.get("parent") and combined > 1:
        lines += ["", f"The DPO adapter was trained on top of `{shown_base}` with the SFT adapter of its parent run "
                  f"(`{Path(run['parent']).name}`) merged in. This repo holds one **combined** adapter (the {combined} "
                  "adapters of the chain concatenated along the rank, scalings folded in), so it loads directly on "
                  "the base model and gives exactly base + SFT + DPO; the base alone is not the DPO reference."]
    elif run.get("parent") and not merged:
        lines.append(f"It applies on top of the model of its parent run (`{Path(run['parent']).name}`), not on the "
                     "base alone: push that run too and load this adapter on it.")
    lines += ["", "## Use", "", "```python"]
    if merged:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")']
    else:
        lines += ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'base = AutoModelForCausalLM.from_pretrained("{base or "BASE_MODEL"}")',
                  f'model = PeftModel.from_pretrained(base, "{repo_id}").merge_and_unload()',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")  # carries the chat template']
    lines += ["```", "", "Prompts are RAFT-style: documents as `<DOCUMENT>...</DOCUMENT>`, then the question; the "
              "answer quotes between `##begin_quote##` and `##end_quote##` and ends with `<ANSWER>: ...`.", "",
              "## Training", "", "| setting | value |", "|---|---|", f"| stage | {stage} |"]
    if stage == "dpo":
        lines += [f"| loss | {loss} |", f"| β | {cfg.get('beta')} |"]
    for key in ("learning_rate", "max_steps", "epochs", "batch_size", "gradient_accumulation_steps", "max_length",
                "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "seed"):
        if cfg.get(key) is not None:
            lines.append(f"| {key} | {cfg[key]} |")
    if data_card:
        lines += ["", "## Data", "", *data_summary(data_card)]
    if eval_results:
        from prefopt.evaluate import LEGEND, markdown_table

        lines += ["", "## Evaluation", "", f"From `prefopt eval` on `{Path(str(eval_results.get('data', ''))).name}`"
                  + (f" (first {eval_results['limit']} rows)" if eval_results.get("limit") else "") + ":", "",
                  markdown_table({Path(k).name or k: v for k, v in eval_results["results"].items()}), "", LEGEND]
    lines += ["", "## Training config", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).strip(), "```", "",
              "## Library versions", "", *(f"- {k} {v}" for k, v in run.get("versions", {}).items())]
    return "\n".join(lines) + "\n"


def dataset_card(card: dict | None, files: list[str], repo_id: str, card_md: str | None = None) -> str:
    splits = [{"split": s, "path": f} for s in ("train", "dpo", "test") for f in files if f.startswith(f"{s}.")]
    meta = {"tags": ["prefopt", "dpo", "preference", "rag"], "task_categories": ["text-generation"],
            **({"configs": [{"config_name": "default", "data_files": splits}]} if splits else {})}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {repo_id}", "",
             "Preference triples (`prompt` / `chosen` / `rejected` in TRL's conversational format, plus `id` and "
             "`meta` with the gold answer, oracle and distractor document ids) collected with prefopt.", ""]
    if card:
        lines += ["## Summary", "", *data_summary(card), ""]
    if card_md:
        lines += ["## Collector card", "", card_md.strip(), ""]
    elif card:
        lines += ["## card.json", "", "```json", json.dumps(card, indent=2), "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- talking to the Hub


def _status(e: BaseException) -> int | None:
    return getattr(getattr(e, "response", None), "status_code", None)


def _transient(e: BaseException) -> bool:
    if _status(e) in TRANSIENT_STATUS:
        return True
    try:
        from huggingface_hub.utils._http import _DEFAULT_RETRY_ON_EXCEPTIONS as kinds
    except ImportError:  # pragma: no cover - another huggingface_hub layout
        kinds = (ConnectionError, TimeoutError)
    return _status(e) is None and isinstance(e, (*kinds, ConnectionError, TimeoutError))


def hub_call(what: str, repo: str, fn: Callable):
    """fn() with retries on transient errors (5xx, 429, timeouts, dropped connections) and one-line errors."""
    wait = RETRY_WAIT
    for attempt in range(1, RETRIES + 1):
        try:
            return fn()
        except PrefoptError:
            raise
        except Exception as e:  # noqa: BLE001 - every Hub failure becomes a one-line PrefoptError
            status = _status(e)
            if status == 401:
                raise PrefoptError(f"{what} {repo}: the Hub refused the token (401 Unauthorized); set HF_TOKEN to a "
                                   "valid write token or run `hf auth login`") from None
            if status == 403:
                raise PrefoptError(f"{what} {repo}: forbidden (403); the token has no write access to this "
                                   "namespace (a fine-grained or read token?)") from None
            if status == 404:
                raise PrefoptError(f"{what} {repo}: not found (404); check the repo id, the namespace and "
                                   "--revision") from None
            if not _transient(e) or attempt == RETRIES:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise PrefoptError(f"{what} {repo} failed"
                                   + (f" after {attempt} attempts" if attempt > 1 else "") + f": {first}") from None
            print(f"prefopt push: {what} {repo}: {status or type(e).__name__}; retrying in {wait:g} s "
                  f"({attempt}/{RETRIES - 1})", file=sys.stderr)
            time.sleep(wait)
            wait *= 2


def _api():
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise PrefoptError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    # HF_ENDPOINT is read here, not at huggingface_hub's import, so a later setting applies too
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)


def upload(api, folder: Path, repo_id: str, repo_type: str, cfg: PushConfig, message: str) -> str:
    """Create the repo (and branch) if needed and commit every file of `folder`; returns the commit URL."""
    from huggingface_hub import CommitOperationAdd

    hub_call("create repo", repo_id, lambda: api.create_repo(repo_id, repo_type=repo_type, private=cfg.private or None,
                                                            exist_ok=True))
    if cfg.revision and cfg.revision != "main":
        hub_call("create branch", repo_id, lambda: api.create_branch(repo_id, repo_type=repo_type,
                                                                    branch=cfg.revision, exist_ok=True))
    files = sorted(p for p in folder.rglob("*") if p.is_file())

    def commit():  # fresh operations on every attempt: a committed operation cannot be reused
        ops = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files]
        return api.create_commit(repo_id, ops, repo_type=repo_type, revision=cfg.revision, commit_message=message)

    info = hub_call("commit to", repo_id, commit)
    return getattr(info, "commit_url", None) or repo_id


# ---------------------------------------------------------------- the command


def _stage_model(src: Path, info: dict, cfg: PushConfig, tmp: Path, base: str | None) -> int:
    """Write the weights to upload into tmp: merged weights, a combined adapter, or the run's adapter.
    Returns how many adapters went into the pushed one (0 for merged weights)."""
    spec = resolve(str(src))
    full = info.get("weights") == "full"
    if full or (cfg.merge and (src / "merged" / "config.json").is_file()):
        # full fine-tuning wrote full weights; `--merge` at training time wrote them to merged/
        d = src if full else src / "merged"
        for p in d.iterdir():
            if p.name in FULL_WEIGHTS or (p.name.startswith("model-") and p.suffix == ".safetensors"):
                shutil.copy2(p, tmp / p.name)
        if not (tmp / "config.json").is_file():
            raise PrefoptError(f"{d}: no config.json / model weights to push")
        return 0
    if cfg.merge:
        print(f"prefopt push: merging {len(spec.adapters)} adapter(s) into {spec.base}", file=sys.stderr)
        load_model(spec).save_pretrained(tmp)
        return 0
    if len(spec.adapters) > 1:
        from safetensors.torch import save_file

        weights, conf = combine_adapters(spec.adapters)
        save_file(weights, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    else:
        shutil.copy2(src / ADAPTER_WEIGHTS, tmp / ADAPTER_WEIGHTS)
        conf = _load_adapter(src)[1]
    if base:
        conf["base_model_name_or_path"] = base
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(conf, indent=2) + "\n", encoding="utf-8")
    return len(spec.adapters)


def run(cfg: PushConfig) -> str:
    src = Path(cfg.run_dir)
    info = read_run(src)
    if info is None:
        raise PrefoptError(f"{src}: not a prefopt run dir (no run.json)")
    if not (src / CONFIG_FILE).is_file():
        raise PrefoptError(f"{src}: no {CONFIG_FILE}")
    train_cfg = read_config(src)
    if cfg.dataset and not Path(cfg.dataset).is_dir():
        raise PrefoptError(f"--dataset {cfg.dataset}: no such directory")
    data_card = read_data_card(Path(cfg.dataset)) if cfg.dataset else None
    merged = cfg.merge or info.get("weights") == "full"
    if not merged:
        _load_adapter(src)  # a clear error before anything goes up
    base = hub_base_model(info["base_model"], cfg.base_model)
    if base is None:
        print("prefopt push: the base model is a local path; the card names no base_model (pass --base-model HUB_ID)",
              file=sys.stderr)
    api = _api()
    dataset_repo = (cfg.dataset_repo_id or f"{cfg.repo_id}-data") if cfg.dataset else None
    eval_path = src / "eval.json"
    eval_results = read_json(eval_path, "rerun prefopt eval, or delete it") if eval_path.is_file() else None
    for name in TOKENIZER_FILES:  # what goes up must load
        if name.endswith(".json") and (src / name).is_file():
            read_json(src / name, "the run dir was damaged after it finished: rerun the stage that wrote it")
    with tempfile.TemporaryDirectory(prefix="prefopt-push-") as tmp_name:
        tmp = Path(tmp_name)
        combined = _stage_model(src, info, cfg, tmp, base)
        for name in TOKENIZER_FILES + RUN_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        card = model_card(info, train_cfg, cfg.repo_id, base_model=base or "", data_card=find_data_card(train_cfg, src),
                          eval_results=eval_results, combined=combined, merged=merged, dataset_repo=dataset_repo)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        n = sum(1 for p in tmp.iterdir() if p.is_file())
        print(f"prefopt push: {n} files from {src} -> {cfg.repo_id}", file=sys.stderr)
        url = upload(api, tmp, cfg.repo_id, "model", cfg, cfg.commit_message)
    print(f"prefopt push: {src} -> {url}")
    if dataset_repo:
        push_dataset(api, Path(cfg.dataset), dataset_repo, cfg, data_card)
    return cfg.repo_id


def read_data_card(data_dir: Path) -> dict | None:
    """card.json of a collected data dir (None when it has none); checked before anything goes up."""
    if not any((data_dir / f).is_file() for f in DATA_FILES if f.startswith(("train.", "test."))):
        raise PrefoptError(f"--dataset {data_dir}: no train/test .jsonl or .parquet (a `prefopt collect` output dir)")
    return read_json(data_dir / "card.json", "rerun the collect command") if (data_dir / "card.json").is_file() else None


def push_dataset(api, data_dir: Path, repo_id: str, cfg: PushConfig, card: dict | None) -> str:
    files = [name for name in DATA_FILES if (data_dir / name).is_file()]
    card_md = (data_dir / "card.md").read_text(encoding="utf-8") if (data_dir / "card.md").is_file() else None
    with tempfile.TemporaryDirectory(prefix="prefopt-push-data-") as tmp_name:
        tmp = Path(tmp_name)
        for name in files:
            shutil.copy2(data_dir / name, tmp / name)
        (tmp / "README.md").write_text(dataset_card(card, files, repo_id, card_md), encoding="utf-8")
        url = upload(api, tmp, repo_id, "dataset", cfg, f"Upload prefopt dataset ({cfg.commit_message})")
    print(f"prefopt push: {data_dir} -> {url}")
    return url
