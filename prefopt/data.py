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
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

from prefopt.errors import PrefoptError

ROLES = {"system", "user", "assistant"}


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise PrefoptError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                           "expected UTF-8 encoded JSON Lines (re-encode the file, e.g. with iconv)") from None


class LineError(ValueError):
    """A line that is not strict JSON: `reason` for a rejects file, `short` for a one-line error."""

    def __init__(self, reason: str, short: str | None = None):
        super().__init__(reason)
        self.reason, self.short = reason, short or reason


def _no_constant(name: str):
    raise LineError(f"{name} is not valid JSON (write a number or null)")


_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_line(line: str):
    """One line of JSON, strictly: NaN/Infinity, numbers of over 4300 digits, nesting deeper than Python can
    read and lone UTF-16 surrogate escapes (not Unicode text) are a LineError saying which."""
    try:
        value = json.loads(line, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise LineError(f"not valid JSON: {e.msg} (column {e.colno}); a truncated line?",
                        f"not JSON ({e.msg}, column {e.colno})") from None
    except RecursionError:
        raise LineError("nested too deeply to read (about 1,000 levels of [ or {)") from None
    except LineError:
        raise
    except ValueError as e:  # int() refuses a number of over 4300 digits
        raise LineError(f"a number too long to read ({str(e).split(':')[0]})") from None
    if _SURROGATE.search(line):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise LineError(f"a lone surrogate escape (\\u{ord(e.object[e.start]):04x}) is not Unicode text") from None
    return value


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the JSON objects of a JSONL file; a bad line is a PrefoptError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise PrefoptError(f"{path}: no such file")
    for lineno, line in _text_lines(path):
        try:
            row = parse_line(line)
        except LineError as e:
            raise PrefoptError(f"{path}:{lineno}: {e.short}; expected one JSON object per line") from None
        if not isinstance(row, dict):
            raise PrefoptError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        yield row


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line; a line that is not UTF-8 is an error naming it."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw, path, lineno)
            if line.strip():
                yield lineno, line


def _read_parquet(path: Path) -> list[dict]:
    from datasets import Dataset

    try:
        return Dataset.from_parquet(str(path)).to_list()
    except Exception as e:  # noqa: BLE001 - pyarrow/datasets raise many kinds; all mean "not a usable Parquet file"
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise PrefoptError(f"{path}: not a readable Parquet file ({why}); expected a Parquet table with "
                           "prompt/chosen/rejected columns") from None


def read_json(path: str | Path, fix: str = "rerun the command that wrote it") -> dict:
    """A JSON object file that prefopt wrote (adapter config, card, eval results); a truncated or corrupt one is a
    PrefoptError naming it and `fix` (what to do about it)."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise PrefoptError(f"{path}: truncated or corrupt ({str(e)[:100]}); {fix}") from None
    if not isinstance(value, dict):
        raise PrefoptError(f"{path}: expected a JSON object, got {type(value).__name__}; {fix}")
    return value


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a JSONL or Parquet file."""
    path = Path(path)
    if path.suffix == ".parquet":
        if not path.is_file():
            raise PrefoptError(f"{path}: no such file")
        return _read_parquet(path)
    return list(read_jsonl(path))


def write_rows(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows atomically (to a temporary name, fsync, then rename); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    rows = list(rows)
    if path.suffix == ".parquet":
        from datasets import Dataset

        Dataset.from_list(rows).to_parquet(str(tmp))
    else:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(rows)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file under a temporary name, fsync, rename: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_messages(value, field: str, last_role: str | None = None) -> str | None:
    if not isinstance(value, list) or not value:
        return f"`{field}` must be a non-empty list of messages"
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in ROLES:
            return f"`{field}` has a message with an unknown role (expected one of {sorted(ROLES)})"
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            return f"`{field}` has a message with empty or non-string content"
    if last_role and value[-1]["role"] != last_role:
        return f"`{field}` must end with an {last_role} message"
    return None


def row_problem(row: dict, fields: tuple[str, ...] = ("prompt", "chosen", "rejected")) -> str | None:
    """Why a row is unusable for preference training, or None when it is fine."""
    for field, last in (("prompt", "user"), ("chosen", "assistant"), ("rejected", "assistant")):
        if field not in fields:
            continue
        if field not in row:
            return f"missing `{field}`"
        problem = _check_messages(row[field], field, last)
        if problem:
            return problem
    if "rejected" in fields and row["chosen"] == row["rejected"]:
        return "chosen == rejected"
    return None


# ---------------------------------------------------------------- checking a whole file: keep or reject each row

KINDS = {  # kind -> (required fields, what a row is expected to be)
    "preference": (("prompt", "chosen", "rejected"), "prompt/chosen/rejected message lists (TRL's conversational format)"),
    "sft": (("prompt", "chosen"), "prompt/chosen message lists, or chat rows with `messages`"),
    "corpus": (("id", "text"), "documents with non-empty `id` and `text`"),
    "questions": (("question", "answer", "doc_id"), "questions with non-empty `question`, `answer` and `doc_id`"),
}
PROXY = re.compile(r"\w+|[^\w\s]")  # the token proxy without a tokenizer: words and punctuation


@dataclass
class Checked:
    """The outcome of checking a file: every row read is kept or rejected (with its line and reason)."""

    path: str
    kind: str
    read: int = 0
    kept: list = dc_field(default_factory=list)
    lines: list = dc_field(default_factory=list)  # the line (JSONL) or row number (Parquet) of each kept row
    rejects: list = dc_field(default_factory=list)  # {"line", "reason", "row" | "text"}

    def summary(self) -> str:
        return f"read {self.read}, kept {len(self.kept)}, rejected {len(self.rejects)}"

    def reasons(self) -> Counter:
        return Counter(r["reason"].split(":")[0].split(" (")[0] for r in self.rejects)


def scan_rows(path: Path) -> Iterator[tuple[int, object, str]]:
    """(line, parsed value or None, raw text) of every non-blank line; Parquet: (row number, row, '')."""
    if not path.is_file():
        raise PrefoptError(f"{path}: no such file")
    if path.suffix == ".parquet":
        for i, row in enumerate(_read_parquet(path), 1):
            yield i, row, ""
        return
    for lineno, line in _text_lines(path):
        try:
            yield lineno, parse_line(line), line
        except LineError as e:
            yield lineno, (e.reason, e.short), line


def count_tokens(messages: list[dict], tokenizer=None) -> int:
    """Tokens of a conversation: the tokenizer's chat template, or a word/punctuation proxy without one."""
    if tokenizer is None:
        return sum(len(PROXY.findall(m["content"])) for m in messages)
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


META_TYPES = {"question": str, "answer": str, "oracle_id": str, "rejected_source_id": str, "oracle_in_context": bool,
              "doc_ids": list}  # the RAG fields prefopt reads (null is allowed: absent)
TEXT_FIELDS = {"text", "title", "question", "answer"}  # corpus / questions fields that must be strings


def _is_id(value) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _type_name(value) -> str:
    return "null" if value is None else {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(value), "number")


def meta_problem(row: dict) -> str | None:
    """Why a row's `id` or `meta` has a value prefopt cannot use, or None."""
    if "id" in row and row["id"] is not None and not _is_id(row["id"]):
        return f"`id` must be a string or an integer, not a {_type_name(row['id'])}"
    meta = row.get("meta")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        return f"`meta` must be an object, not a {_type_name(meta)}"
    for key, kind in META_TYPES.items():
        value = meta.get(key)
        if value is not None and not isinstance(value, kind):
            return f"`meta.{key}` must be a {_type_name(kind())}, not a {_type_name(value)}"
    if not all(_is_id(d) for d in meta.get("doc_ids") or []):
        return "`meta.doc_ids` must be a list of strings"
    return None


def _row_reason(row: dict, kind: str) -> str | None:
    if kind in ("corpus", "questions"):
        for k in (*KINDS[kind][0], *sorted(TEXT_FIELDS & row.keys())):
            v, text = row.get(k), k in TEXT_FIELDS
            if v is not None and not (isinstance(v, str) if text else _is_id(v)):
                return f"`{k}` must be a string{'' if text else ' or an integer'}, not a {_type_name(v)}"
        missing = [k for k in KINDS[kind][0] if row.get(k) is None or not str(row[k]).strip()]
        return f"missing or empty {', '.join(f'`{k}`' for k in missing)}" if missing else None
    problem = meta_problem(row)
    if problem:
        return problem
    if kind == "sft" and "messages" in row:
        problem = _check_messages(row["messages"], "messages", "assistant")
        if not problem and len(row["messages"]) < 2:
            problem = "`messages` needs a prompt before the assistant answer"
        return problem
    return row_problem(row, KINDS[kind][0])


def _length_reason(row: dict, kind: str, count, max_length: int) -> str | None:
    sides = [row["messages"]] if "messages" in row and kind == "sft" else \
        [row["prompt"] + row[s] for s in KINDS[kind][0][1:]]
    try:
        n = max(count(messages) for messages in sides)
    except Exception as e:  # noqa: BLE001 - a chat template may refuse a row (e.g. role order)
        return f"the chat template cannot render it ({type(e).__name__}: {str(e)[:120]})"
    return f"too long for --max-length ({n} > {max_length} tokens)" if n > max_length else None


def limit_length(checked: "Checked", max_length: int | None, tokenizer=None) -> "Checked":
    """Move the kept rows longer than max_length tokens (prompt + completion; the tokenizer's chat template, or
    a word/punctuation proxy without a tokenizer) to the rejects."""
    if not max_length or checked.kind not in ("preference", "sft"):
        return checked
    count, kept, lines = (lambda messages: count_tokens(messages, tokenizer)), [], []
    for lineno, row in zip(checked.lines, checked.kept):
        reason = _length_reason(row, checked.kind, count, max_length)
        if reason:
            checked.rejects.append({"line": lineno, "reason": reason, "row": row})
        else:
            kept.append(row)
            lines.append(lineno)
    checked.kept, checked.lines = kept, lines
    checked.rejects.sort(key=lambda r: r["line"])
    return checked


def check_file(path: str | Path, kind: str = "preference", max_length: int | None = None,
               tokenizer=None) -> Checked:
    """Check every row of a file: file-level problems raise PrefoptError (file, line, what was expected);
    each row is kept or rejected with a reason, and read = kept + rejected."""
    path = Path(path)
    required, expected = KINDS[kind]
    out, parsed, file_reason, ids = Checked(str(path), kind), [], "", {}
    for lineno, value, text in scan_rows(path):
        out.read += 1
        if isinstance(value, tuple):
            reason, file_reason = value[0], file_reason or value[1]
        elif not isinstance(value, dict):
            reason = f"expected a JSON object, got {type(value).__name__}"
        else:
            parsed.append((lineno, value))
            reason = _row_reason(value, kind)
            if reason is None and kind == "corpus":
                first = ids.setdefault(str(value["id"]), lineno)
                reason = f"duplicate `id` (first on line {first})" if first != lineno else None
            if reason is None:
                out.kept.append(value)
                out.lines.append(lineno)
                continue
        out.rejects.append({"line": lineno, "reason": reason, **({"row": value} if isinstance(value, dict)
                                                                  else {"text": text.rstrip("\n")[:2000]})})
    if not out.read:
        raise PrefoptError(f"{path}: empty file; expected {'a Parquet table' if path.suffix == '.parquet' else 'JSON Lines, one object per line'} of {expected}")
    if not parsed:  # nothing in the file is a JSON object: the file is not JSON Lines at all
        line, why = out.rejects[0]["line"], file_reason if out.rejects[0]["reason"].startswith("not valid") \
            else out.rejects[0]["reason"]
        try:
            whole = json.loads(path.read_text(encoding="utf-8"))
            line, why = 1, f"a single JSON {type(whole).__name__}, not one object per line"
        except ValueError:
            pass
        raise PrefoptError(f"{path}:{line}: {why}; expected JSON Lines (one JSON object per line) of {expected}")
    alternatives = [required] + ([("messages",)] if kind == "sft" else [])
    if not out.kept and all(any(all(k not in row for _, row in parsed) for k in fields) for fields in alternatives):
        missing = next(k for k in required if all(k not in row for _, row in parsed))
        lineno, row = parsed[0]
        raise PrefoptError(f"{path}:{lineno}: no row has `{missing}` (line {lineno} has {', '.join(str(k).encode('unicode_escape').decode() for k in row) or 'no keys'}); "
                           f"expected {expected}")
    limit_length(out, max_length, tokenizer)
    assert out.read == len(out.kept) + len(out.rejects)
    return out


def main_process() -> bool:
    """Rank 0, or no launcher: the process that writes a run's shared files."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def report(checked: Checked, rejects_to: str | Path | None = None, strict: bool = False, quiet: bool = False) -> None:
    """Print the counts (and the reasons), write the rejects file, and fail when nothing is usable or `strict`
    and a row was rejected."""
    if rejects_to and main_process():
        write_rows(rejects_to, checked.rejects)
    if not quiet and main_process():
        reasons = "; ".join(f"{n} {r}" for r, n in checked.reasons().most_common(5))
        where = f" (rejects in {rejects_to})" if rejects_to and checked.rejects else ""
        print(f"prefopt: {checked.path}: {checked.summary()}" + (f": {reasons}{where}" if reasons else ""), flush=True)
    if checked.rejects and (strict or not checked.kept):
        first = checked.rejects[0]
        why = "strict: a rejected row fails the run" if checked.kept else "no usable rows left"
        raise PrefoptError(f"{checked.path}:{first['line']}: {first['reason']} ({why}; {checked.summary()})")


def load_rows(path: str | Path, rejects_to: str | Path | None = None, strict: bool = False,
              max_length: int | None = None, tokenizer=None, kind: str = "preference") -> list[dict]:
    """The usable rows of a file of KINDS[kind] (as `prefopt validate` checks it): bad rows are rejected (to
    `rejects_to`, with reasons), a bad file is a PrefoptError naming file and line; fails when no row is usable,
    or with `strict` when any is rejected."""
    checked = check_file(path, kind, max_length, tokenizer)
    report(checked, rejects_to, strict)
    return checked.kept


def shows_oracle(row: dict) -> bool:
    """False only for a RAG row whose prompt leaves the oracle out (rows without RAG metadata: True)."""
    return (row.get("meta") or {}).get("oracle_in_context", True)


def judgeable(row: dict) -> bool:
    """An answer to this row can be judged: it has a gold answer (``meta.answer``) and its oracle in the prompt
    (the rows eval generates for, and on-policy sampling samples for)."""
    return bool((row.get("meta") or {}).get("answer")) and shows_oracle(row)


def sft_rows(rows: list[dict]) -> list[dict]:
    """Chat rows `{"messages": [..., assistant]}` as prompt / chosen; preference triples as they are."""
    return [{"prompt": r["messages"][:-1], "chosen": r["messages"][-1:]} if "messages" in r else r for r in rows]


def dpo_dataset(rows: list[dict]):
    """A datasets.Dataset in TRL's conversational preference format (provenance dropped)."""
    from datasets import Dataset

    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])


def sft_dataset(rows: list[dict]):
    """A prompt-completion dataset of the chosen answers: SFTTrainer then puts the loss on them alone."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows])
