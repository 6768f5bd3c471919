"""The canonical preference format, and reading/writing it.

A row is TRL's conversational preference format with an explicit prompt, plus provenance::

    {"id": "...",
     "prompt":   [{"role": "system", "content": ...}, {"role": "user", "content": ...}],
     "chosen":   [{"role": "assistant", "content": ...}],
     "rejected": [{"role": "assistant", "content": ...}],
     "meta": {...}}

For RAG rows ``meta`` holds ``question``, ``answer`` (gold), ``oracle_id``, ``doc_ids`` (in prompt order),
``oracle_in_context`` and ``rejected_source_id``. Files are JSONL, or Parquet (read and written through
``datasets``) when the name ends in ``.parquet``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from prefopt.errors import PrefoptError

ROLES = {"system", "user", "assistant"}


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the JSON objects of a JSONL file; a bad line is a PrefoptError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise PrefoptError(f"{path}: no such file")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PrefoptError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise PrefoptError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield row


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a JSONL or Parquet file."""
    path = Path(path)
    if path.suffix == ".parquet":
        if not path.is_file():
            raise PrefoptError(f"{path}: no such file")
        from datasets import Dataset

        return Dataset.from_parquet(str(path)).to_list()
    return list(read_jsonl(path))


def write_rows(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows atomically (to a temporary name, then rename); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    rows = list(rows)
    if path.suffix == ".parquet":
        from datasets import Dataset

        Dataset.from_list(rows).to_parquet(str(tmp))
    else:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return len(rows)


def _check_messages(value, field: str, last_role: str | None = None) -> str | None:
    if not isinstance(value, list) or not value:
        return f"`{field}` must be a non-empty list of messages"
    for m in value:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return f"`{field}` has a message with an unknown role (expected one of {sorted(ROLES)})"
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            return f"`{field}` has a message with empty or non-string content"
    if last_role and value[-1]["role"] != last_role:
        return f"`{field}` must end with an {last_role} message"
    return None


def row_problem(row: dict) -> str | None:
    """Why a row is unusable for preference training, or None when it is fine."""
    for field, last in (("prompt", "user"), ("chosen", "assistant"), ("rejected", "assistant")):
        if field not in row:
            return f"missing `{field}`"
        problem = _check_messages(row[field], field, last)
        if problem:
            return problem
    if row["chosen"] == row["rejected"]:
        return "chosen == rejected"
    return None


def load_preferences(path: str | Path) -> list[dict]:
    """Read a preference file and check every row; a bad row is an error naming its line."""
    rows = read_rows(path)
    if not rows:
        raise PrefoptError(f"{path}: no rows")
    for i, row in enumerate(rows, 1):
        problem = row_problem(row)
        if problem:
            raise PrefoptError(f"{path}: row {i}: {problem}")
    return rows


def load_sft_rows(path: str | Path) -> list[dict]:
    """SFT rows: preference triples (their chosen side), or chat rows `{"messages": [..., assistant]}`."""
    rows = read_rows(path)
    if not rows:
        raise PrefoptError(f"{path}: no rows")
    out = []
    for i, row in enumerate(rows, 1):
        if "messages" in row:
            problem = _check_messages(row["messages"], "messages", "assistant")
            if not problem and len(row["messages"]) < 2:
                problem = "`messages` needs a prompt before the assistant answer"
            if problem:
                raise PrefoptError(f"{path}: row {i}: {problem}")
            out.append({"prompt": row["messages"][:-1], "chosen": row["messages"][-1:]})
            continue
        problem = row_problem(row)
        if problem:
            raise PrefoptError(f"{path}: row {i}: {problem} (or give chat rows with `messages`)")
        out.append(row)
    return out


def dpo_dataset(rows: list[dict]):
    """A datasets.Dataset in TRL's conversational preference format (provenance dropped)."""
    from datasets import Dataset

    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])


def sft_dataset(rows: list[dict]):
    """A prompt-completion dataset of the chosen answers: SFTTrainer then puts the loss on them alone."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows])
