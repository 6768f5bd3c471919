"""`prefopt push`: upload a run's adapter, tokenizer, config and a model card to the Hugging Face Hub.

The token comes from HF_TOKEN or the cached `hf auth login`; huggingface_hub reads it, prefopt never does.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from prefopt.config import CONFIG_FILE, opt, read_run
from prefopt.errors import PrefoptError

UPLOAD = ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "chat_template.jinja", CONFIG_FILE, "run.json", "metrics.jsonl", "eval.json")


@dataclass
class PushConfig:
    """Push a run's LoRA adapter and tokenizer to the Hugging Face Hub with a model card."""

    run_dir: str = opt("", "The prefopt run dir (from sft or dpo) to upload.", argument=True)
    repo_id: str = opt("", "Target model repo, USER/NAME.")
    private: bool = opt(False, "Create the repo as private.")
    revision: Optional[str] = opt(None, "Branch to commit to (default: main).")
    commit_message: str = opt("Upload prefopt adapter", "Commit message.")

    def __post_init__(self) -> None:
        if not self.run_dir or not self.repo_id:
            raise PrefoptError("push needs RUN_DIR and --repo-id USER/NAME")


def model_card(run: dict, cfg: dict, repo_id: str) -> str:
    stage = run["stage"]
    tags = ["prefopt", "trl", "peft", "lora", stage]
    if stage == "dpo":
        tags.append("ipo" if "ipo" in str(cfg.get("loss")) else "dpo")
    meta = {"base_model": run["base_model"], "library_name": "peft", "tags": tags}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {repo_id}", "",
             f"A LoRA adapter trained with prefopt ({stage}) on `{run['base_model']}`."]
    if run.get("parent"):
        lines.append(f"It applies on top of the base model with the adapter of its parent run (`{Path(run['parent']).name}`) merged in.")
    lines += ["", "## Training config", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).strip(), "```", "",
              "## Library versions", "", *(f"- {k} {v}" for k, v in run.get("versions", {}).items())]
    return "\n".join(lines) + "\n"


def run(cfg: PushConfig) -> str:
    from huggingface_hub import HfApi

    src = Path(cfg.run_dir)
    info = read_run(src)
    if info is None:
        raise PrefoptError(f"{src}: not a prefopt run dir (no run.json)")
    train_cfg = yaml.safe_load((src / CONFIG_FILE).read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        for name in UPLOAD:
            if (src / name).is_file():
                shutil.copy2(src / name, Path(tmp) / name)
        (Path(tmp) / "README.md").write_text(model_card(info, train_cfg, cfg.repo_id), encoding="utf-8")
        api = HfApi()
        api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True)
        commit = api.upload_folder(folder_path=tmp, repo_id=cfg.repo_id, revision=cfg.revision,
                                   commit_message=cfg.commit_message)
    print(f"prefopt push: {src} -> {commit.commit_url if hasattr(commit, 'commit_url') else cfg.repo_id}")
    return cfg.repo_id
