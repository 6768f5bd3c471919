"""`prefopt validate FILE`: the data checks of sft / dpo / eval (and of the collector's inputs) alone, in seconds.

A file-level problem (no such file, not UTF-8, empty, not JSON Lines, not Parquet, a required field missing in
every row) is a one-line error naming the file and line, exit code 2. Each row is kept or rejected with a reason
(a truncated line, missing `rejected`, empty or non-string content, an unknown role, chosen == rejected, longer
than --max-length); the last line printed is ``read N, kept K, rejected R``. Exit code 2 when nothing usable is
left, or with --strict when any row is rejected; else 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from prefopt.config import choice, opt, shared
from prefopt.errors import PrefoptError

FORMATS = ("auto", "preference", "sft", "corpus", "questions")
SHOW = 10  # rejected rows listed on screen


@dataclass
class ValidateConfig:
    """Check a data file as sft / dpo / eval (or collect rag) would, without loading a model: every row kept or
    rejected with a reason; ends with `read N, kept K, rejected R`."""

    file: str = opt("", "Data file: JSONL, or Parquet when the name ends in .parquet.", argument=True)
    format: str = opt("auto", "What the rows are: auto (sft when the first row has `messages`, else preference), "
                              "preference (dpo, eval), sft, corpus (collect rag --corpus), questions (--questions).")
    max_length: Optional[int] = shared("max_length")
    tokenizer: Optional[str] = shared("tokenizer")
    rejects: Optional[str] = opt(None, "Write the rejected rows with their line and reason to this JSONL file.")
    strict: bool = shared("strict", config_only=False)
    trust_remote_code: bool = shared("trust_remote_code", config_only=False)

    def __post_init__(self) -> None:
        if not self.file:
            raise PrefoptError("the file to check is required: prefopt validate FILE")
        choice(self.format, "format", FORMATS)
        if self.max_length is not None and self.max_length < 1:
            raise PrefoptError("--max-length must be >= 1")


def _kind(cfg: ValidateConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    from prefopt.data import scan_rows

    for _, row, _ in scan_rows(Path(cfg.file)):
        return "sft" if isinstance(row, dict) and "messages" in row else "preference"
    return "preference"


def run(cfg: ValidateConfig):
    from prefopt.data import check_file, limit_length, report

    kind = _kind(cfg)
    checked = check_file(cfg.file, kind)  # file-level problems raise here, before any tokenizer loads
    if cfg.max_length:
        tokenizer = None
        if cfg.tokenizer:
            from prefopt.models import load_tokenizer, resolve

            tokenizer = load_tokenizer(resolve(cfg.tokenizer), cfg.trust_remote_code)
        limit_length(checked, cfg.max_length, tokenizer)
    for r in checked.rejects[:SHOW]:
        print(f"{cfg.file}:{r['line']}: rejected: {r['reason']}")
    if len(checked.rejects) > SHOW:
        print(f"... and {len(checked.rejects) - SHOW} more" + (f" (all in {cfg.rejects})" if cfg.rejects else
                                                                   " (--rejects FILE writes them all)"))
    for reason, n in checked.reasons().most_common():
        print(f"  {n:>6}  {reason}")
    print(f"{cfg.file} ({kind}): " + "read {}, kept {}, rejected {}".format(checked.read, len(checked.kept),
                                                                          len(checked.rejects)))
    report(checked, cfg.rejects, cfg.strict, quiet=True)
    return checked
