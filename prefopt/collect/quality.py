"""Data quality: exact and near-duplicate removal, and the data card (card.json + card.md).

Duplicates: two items are exact duplicates when their normalized text (lower-cased words, punctuation and
whitespace dropped) is equal, and near duplicates when the Jaccard similarity of their word 3-shingles is at
least ``near_dup`` (default 0.9; 0 or 1 turns near-duplicate removal off). Candidates are found through an
inverted index of shingles, so the cost grows with the number of shared shingles, not with all pairs.
The first occurrence is kept; later ones go to rejects.jsonl naming the kept item.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

from prefopt.collect import extractive
from prefopt.data import write_rows, write_text_atomic

SHINGLE = 3
_COMMON = 2000  # shingles shared by more items than this are skipped as candidate keys (never as evidence)


def shingles(text: str, n: int = SHINGLE) -> set[str]:
    w = extractive.words(text)
    if len(w) <= n:
        return {" ".join(w)} if w else set()
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


class Dedup:
    """Streaming duplicate filter: `seen(key_text, item_id)` returns a reason when the text duplicates an
    earlier one, else records it and returns None."""

    def __init__(self, near: float = 0.9):
        self.near = near if 0 < near < 1 else None
        self.exact: dict[str, str] = {}
        self.sets: list[set[str]] = []
        self.ids: list[str] = []
        self.index: dict[str, list[int]] = defaultdict(list)

    def seen(self, text: str, item_id: str) -> str | None:
        key = hashlib.sha1(extractive.normalize(text).encode()).hexdigest()
        if key in self.exact:
            return f"exact duplicate of {self.exact[key]}"
        self.exact[key] = item_id
        if self.near is None:
            return None
        sh = shingles(text)
        shared: Counter = Counter()
        for s in sh:
            posting = self.index.get(s)
            if posting and len(posting) <= _COMMON:
                shared.update(posting)
        for j, _ in shared.most_common(8):
            other = self.sets[j]
            inter = len(sh & other)
            if inter and inter / (len(sh) + len(other) - inter) >= self.near:
                return f"near duplicate of {self.ids[j]} (jaccard >= {self.near})"
        k = len(self.sets)
        self.sets.append(sh)
        self.ids.append(item_id)
        for s in sh:
            self.index[s].append(k)
        return None


def reason_key(reason: str) -> str:
    """The card's key for a reject reason: without the row-specific tail ("of record 3", "(2053 > 2048 tokens)")."""
    if reason.startswith(("exact duplicate", "near duplicate")):
        return reason.split(" of ")[0]
    return reason.split(" (")[0] if reason.startswith("longer than") else reason


def histogram(values: list[int], bins: int = 8) -> list[dict]:
    """Equal-width bins over [min, max]: [{lo, hi, n}]."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    width = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter((v - lo) // width for v in values)
    return [{"lo": lo + i * width, "hi": lo + (i + 1) * width - 1, "n": counts.get(i, 0)}
            for i in range((hi - lo) // width + 1)]


def length_stats(rows: list[dict], counter) -> dict:
    """Token-length histograms of prompt, chosen and rejected (counted with `counter`)."""
    out = {}
    for field in ("prompt", "chosen", "rejected"):
        vals = [counter.messages(r[field]) for r in rows]
        if vals:
            out[field] = {"min": min(vals), "mean": round(sum(vals) / len(vals), 1), "max": max(vals),
                          "histogram": histogram(vals)}
    return out


def template_versions(tpl, names: tuple[str, ...]) -> dict[str, str]:
    """sha1[:12] of each template's source, as loaded (so an override in template_dir shows)."""
    out = {}
    for name in names:
        source, filename, _ = tpl.env.loader.get_source(tpl.env, name)
        out[name] = f"{hashlib.sha1(source.encode()).hexdigest()[:12]} ({Path(filename).parent.name}/)"
    return out


def write_card(out_dir: str | Path, card: dict) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "card.json", json.dumps(card, indent=2) + "\n")
    write_text_atomic(out_dir / "card.md", card_markdown(card))


def write_split(out_dir: str | Path, splits: dict[str, list[dict]]) -> None:
    for name, rows in splits.items():
        write_rows(Path(out_dir) / f"{name}.jsonl", rows)


def _bar(n: int, top: int, width: int = 30) -> str:
    return "#" * max(1 if n else 0, round(width * n / top)) if top else ""


def _cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def card_markdown(card: dict) -> str:
    lines = [f"# Data card: {card.get('command', 'prefopt collect')}", ""]
    kept = card.get("kept", {})
    lines += ["## Counts", "", "| | rows |", "|---|---|", f"| in | {card.get('in')} |"]
    lines += [f"| kept: {k} | {v} |" for k, v in kept.items()]
    lines += [f"| rejected | {card.get('rejected')} |", ""]
    if card.get("rejected_by_reason"):
        lines += ["### Rejected by reason", "", "| reason | rows |", "|---|---|"]
        lines += [f"| {_cell(k)} | {v} |" for k, v in sorted(card["rejected_by_reason"].items(), key=lambda kv: -kv[1])]
        lines.append("")
    settings = {k: v for k, v in card.items() if not isinstance(v, (dict, list)) and k not in ("in", "rejected", "command")}
    lines += ["## Settings and provenance", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in settings.items()]
    for key in ("documents", "templates", "versions"):
        if card.get(key):
            lines += [f"| {key} | {_cell(', '.join(f'{k}: {v}' for k, v in card[key].items()))} |"]
    lines.append("")
    for split, stats in card.get("lengths", {}).items():
        lines += [f"## Token lengths: {split} ({card.get('token_counter', '')})", ""]
        for field, s in stats.items():
            lines += [f"{field}: min {s['min']}, mean {s['mean']}, max {s['max']}", "```"]
            top = max(b["n"] for b in s["histogram"])
            lines += [f"{b['lo']:>6}-{b['hi']:<6} {b['n']:>6} {_bar(b['n'], top)}" for b in s["histogram"]]
            lines += ["```", ""]
    return "\n".join(lines).rstrip() + "\n"
