"""Resume, shards and `prefopt collect merge`.

Resume: `collect rag` appends every finished question (a kept row or a reject) to ``OUT/.partial.jsonl`` as
one line keyed by the question's id, flushed at once and fsync'ed every 64 lines. ``OUT/.partial.json`` holds
a fingerprint of the settings and of the input files (corpus, questions) that shape the output. A rerun with
the same settings and inputs skips the ids already there (a line cut short by a kill is dropped), so nothing
is done twice and nothing is lost; at the end the rows are sorted by id and written atomically (temporary file,
then rename) to train/dpo/test/rejects.jsonl with the card, and the partial files are removed. Other settings
or an edited input on the same --output-dir are refused unless --restart is given.

Shards: ``--shard i/n`` takes the questions whose position in the questions file is i modulo n (or, when an
LLM writes the questions, the chunks at those positions). Duplicate removal and the train/test split are
computed over all questions and documents in every shard, and each query's distractors depend on that
query only, so the merged shards equal the unsharded run.

Merge: ``prefopt collect merge DIR1 DIR2 ... --output-dir DIR`` checks that the dirs come from the same settings
and, when sharded, cover shards 0..n-1 once each; rejects rows whose id or question repeats across dirs,
refuses document ids on both sides of the split, and rebuilds the card.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from prefopt.collect import quality
from prefopt.config import opt
from prefopt.data import read_jsonl
from prefopt.errors import PrefoptError
from prefopt.rundir import digest

PARTIAL, PARTIAL_META = ".partial.jsonl", ".partial.json"
SPLITS = ("train", "dpo", "test", "rejects")
ROWS = ("train", "dpo", "test")  # the splits of preference rows
# settings that do not change the output: a rerun may change them and still resume
_NOT_OUTPUT = {"output_dir", "concurrency", "retries", "backoff", "restart", "cache"}
_COUNTS = {"in", "questions_in", "kept", "rejected", "rejected_by_reason", "oracle_rate_train", "lengths", "shard",
           "merged"}


def parse_shard(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise PrefoptError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise PrefoptError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def fingerprint(cfg) -> dict:
    """sha1s of what shapes the output: the settings, and the bytes of the corpus and questions files."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_OUTPUT}
    return {"settings": hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
            **{name: digest(getattr(cfg, name)) for name in ("corpus", "questions") if getattr(cfg, name, "")}}


class Partial:
    """The rows of an unfinished run: `done` (question ids), `append(split, qid, record)`, `finish()`."""

    def __init__(self, out: str | Path, fp: dict, restart: bool = False):
        self.dir = Path(out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path, self.meta = self.dir / PARTIAL, self.dir / PARTIAL_META
        if restart:
            self.remove()
        if self.path.exists() and self.path.stat().st_size:  # an empty one (a run that failed early) starts afresh
            old = json.loads(self.meta.read_text()).get("fingerprint") if self.meta.exists() else None
            changed = [k for k in fp if not isinstance(old, dict) or old.get(k) != fp[k]]
            if changed:
                what = " and ".join("other settings" if k == "settings" else f"another --{k} file" for k in changed)
                raise PrefoptError(f"{out} holds an interrupted run made with {what}: rerun it with the same flags "
                                   "and inputs to resume, pass --restart to discard it, or use another --output-dir")
        else:
            self.meta.write_text(json.dumps({"fingerprint": fp}) + "\n")
        self.done: set[str] = set()
        self._load()
        self.f = open(self.path, "a", encoding="utf-8")
        self.n = 0

    def _load(self) -> None:
        """Read the ids already done; cut off a last line left half-written by a kill."""
        if not self.path.exists():
            return
        good = 0
        with open(self.path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    self.done.add(json.loads(line)["qid"])
                except (ValueError, KeyError):
                    break
                good += len(line)
        if good != self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def append(self, split: str, qid: str, record: dict) -> None:
        if qid in self.done:
            return
        self.f.write(json.dumps({"qid": qid, "split": split, "record": record}, ensure_ascii=False) + "\n")
        self.f.flush()
        self.done.add(qid)
        self.n += 1
        if self.n % 64 == 0:
            os.fsync(self.f.fileno())

    def finish(self) -> dict[str, list[dict]]:
        """Every record of this run and the interrupted ones, by split, each sorted by id."""
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
        for line in read_jsonl(self.path):
            splits[line["split"]].append(line["record"])
        return {s: sorted(rows, key=lambda r: r["id"]) for s, rows in splits.items()}

    def remove(self) -> None:
        for p in (self.path, self.meta):
            p.unlink(missing_ok=True)


def finish_card(card: dict, splits: dict[str, list[dict]], counter) -> dict:
    """The card's counts from the rows: in, kept, rejected by reason, oracle rate, token lengths."""
    train, rejects = splits.get("train", []), splits.get("rejects", [])
    kept = {s: len(splits.get(s, [])) for s in ROWS}
    n = sum(kept.values()) + len(rejects)
    counts = {"in": n, "questions_in": n, "kept": kept,
              "rejected": len(rejects),
              "rejected_by_reason": dict(Counter(quality.reason_key(r["reason"]) for r in rejects).most_common()),
              "oracle_rate_train": round(sum(r["meta"]["oracle_in_context"] for r in train) / max(len(train), 1), 4)}
    settings = {k: v for k, v in card.items() if k not in _COUNTS or k in ("shard", "merged")}
    lengths = {s: quality.length_stats(splits[s], counter) for s in ROWS if splits.get(s)}
    return {"command": card.get("command", "prefopt collect rag"), **counts, **settings, "lengths": lengths}


def write_outputs(out: str | Path, splits: dict[str, list[dict]], card: dict) -> None:
    if not splits.get("dpo"):  # no dpo.jsonl without DPO rows (--dpo-share 0), nor one left from an earlier run
        (Path(out) / "dpo.jsonl").unlink(missing_ok=True)
        splits = {s: rows for s, rows in splits.items() if s != "dpo"}
    quality.write_split(out, splits)
    quality.write_card(out, card)


@dataclass
class MergeConfig:
    """Join the output dirs of `collect rag --shard i/n` runs into one: duplicates re-checked, split checked, card rebuilt."""

    dirs: list[str] = opt([], "Output dirs of the shards (`collect rag --shard i/n --output-dir DIR`).", argument=True)
    output_dir: str = opt("data/rag", "Output dir of the merged train.jsonl, dpo.jsonl, test.jsonl, rejects.jsonl, "
                                      "card.json, card.md.", aliases=("--out",))

    def __post_init__(self) -> None:
        if not self.dirs:
            raise PrefoptError("give the shard output dirs: prefopt collect merge DIR1 DIR2 ... --output-dir DIR")


def _settings(card: dict) -> dict:
    return {k: v for k, v in card.items() if k not in _COUNTS}


def merge(cfg: MergeConfig) -> dict:
    from prefopt.collect.verify import TokenCounter

    cards = []
    for d in cfg.dirs:
        path = Path(d) / "card.json"
        if not path.is_file():
            raise PrefoptError(f"{d}: no card.json; not a finished `collect rag` output (rerun its shard to finish it)")
        cards.append(json.loads(path.read_text(encoding="utf-8")))
    base = _settings(cards[0])
    for d, c in zip(cfg.dirs[1:], cards[1:]):
        diff = sorted(k for k in set(base) | set(_settings(c)) if base.get(k) != c.get(k))
        if diff:
            raise PrefoptError(f"{d} was made with other settings than {cfg.dirs[0]} ({', '.join(diff)})")
    shards = [c.get("shard") for c in cards]
    if any(shards):
        if not all(shards):
            raise PrefoptError("some dirs are shards and some are not")
        parsed = [parse_shard(s) for s in shards]
        n = parsed[0][1]
        got = sorted(i for i, _ in parsed)
        if any(m != n for _, m in parsed) or got != list(range(n)):
            missing = sorted(set(range(n)) - set(got))
            raise PrefoptError(f"shards {', '.join(shards)}: need each of 0/{n} .. {n - 1}/{n} exactly once"
                               + (f" (missing {', '.join(f'{i}/{n}' for i in missing)})" if missing else ""))
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for d in cfg.dirs:
        for s in SPLITS:
            if (Path(d) / f"{s}.jsonl").exists():
                splits[s] += list(read_jsonl(Path(d) / f"{s}.jsonl"))
    seen: set[str] = set()
    dedup = quality.Dedup(cards[0].get("near_dup", 0.9))
    for s in ROWS:
        kept = []
        for row in sorted(splits[s], key=lambda r: r["id"]):
            m = row["meta"]
            reason = "duplicate row id across shards" if row["id"] in seen else \
                dedup.seen(f"{m['question']} {m['answer']}", f"row {row['id']}")
            seen.add(row["id"])
            if reason:
                splits["rejects"].append({"id": row["id"], "question": {"question": m["question"], "answer": m["answer"],
                                                                        "doc_id": m["oracle_id"]}, "reason": reason})
            else:
                kept.append(row)
        splits[s] = kept
    docs = {s: {i for r in splits[s] for i in r["meta"]["doc_ids"] + [r["meta"]["oracle_id"]]} for s in ROWS}
    both = (docs["train"] | docs["dpo"]) & docs["test"]
    if both:
        raise PrefoptError(f"document ids in both train and test ({', '.join(sorted(both)[:5])}): "
                           "the shards were split differently (same --seed, --test-size and corpus needed)")
    splits["rejects"].sort(key=lambda r: r["id"])
    card = finish_card({**base, "merged": shards if any(shards) else list(cfg.dirs)}, splits,
                       TokenCounter(cards[0].get("tokenizer")))
    write_outputs(cfg.output_dir, splits, card)
    print(f"prefopt collect merge: {len(cfg.dirs)} dirs -> {card['kept']['train']} train, {card['kept']['dpo']} dpo, "
          f"{card['kept']['test']} test, "
          f"{card['rejected']} rejected; written to {cfg.output_dir}")
    return card
