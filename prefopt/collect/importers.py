"""`prefopt collect import`: existing preference data -> prefopt's canonical triples.

Formats (``--format``):

- ``raft``: output of RAFT's ``raft.py`` (``instruction``, ``cot_answer``, ``oracle_context``, ``context``).
  The prompt is the instruction as the user message, chosen is the ``cot_answer``; rejected is built in the
  same chain-of-thought format (template ``raft_rejected.j2``) from the distractor of ``context`` whose
  best-matching sentence is not in the oracle. Document ids are ``d`` + sha1 of the text, so the same
  document has the same id in every row. Rows are verified like ``collect rag`` rows (verify.py).
- ``trl``: TRL's standard (strings) and conversational (message lists) preference formats, with an
  explicit ``prompt`` or an implicit one (the shared leading messages, or the shared text prefix cut at a
  word boundary).
- ``hh``: Anthropic HH-RLHF: full ``\\n\\nHuman: ... \\n\\nAssistant: ...`` transcripts in ``chosen`` and
  ``rejected``; the shared leading turns are the prompt.
- ``ratings``: several rated completions per prompt, either one row per prompt with ``completions``
  (dicts with ``response``/``completion``/``text`` and ``rating``/``score``, or strings with a parallel
  ``ratings`` list), or one row per completion (``prompt``, ``completion``/``response``, ``rating``/``score``)
  grouped by prompt. The best- and worst-rated completions become chosen and rejected, when their margin
  is at least ``--min-margin`` (ties are never a pair).

Every input record (a prompt group for ``ratings``) ends up in train.jsonl or in rejects.jsonl with a
reason; card.json / card.md count them (in = kept + rejected).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import prefopt
from prefopt.collect import extractive, quality, verify
from prefopt.config import choice, opt, shared
from prefopt.data import read_rows
from prefopt.errors import PrefoptError
from prefopt.raft import after_documents, final_answer
from prefopt.templates import Templates

FORMATS = ("raft", "trl", "hh", "ratings")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_TEXT_KEYS = ("response", "completion", "text", "content", "output")
_SCORE_KEYS = ("rating", "score", "overall_score", "reward")


class Skip(Exception):
    """A record that cannot be converted; the message is its reason in rejects.jsonl."""


@dataclass
class ImportConfig:
    """Convert RAFT output, TRL preference data, Anthropic HH transcripts or rated completions into prefopt triples."""

    input: str = opt("", "Input file: JSONL, or Parquet when the name ends in .parquet.", argument=True)
    format: str = opt("trl", "Input format: raft, trl, hh, ratings.")
    output_dir: str = opt("data/import", "Output dir: train.jsonl, rejects.jsonl, card.json, card.md.",
                          aliases=("--out",))
    min_margin: float = opt(0.0, "ratings: least rating difference between chosen (best) and rejected (worst).")
    max_length: int = shared("max_length", 2048, "Count with --tokenizer; use the same in sft/dpo (0: no limit).")
    tokenizer: Optional[str] = shared("tokenizer")
    quote_match: str = shared("quote_match", help="(raft)")
    near_dup: float = shared("near_dup")
    template_dir: Optional[str] = shared("template_dir")
    strict: bool = shared("strict", config_only=False, help="The outputs are still written for a look.")

    def __post_init__(self) -> None:
        if not self.input:
            raise PrefoptError("the input file is required: prefopt collect import FILE --format FORMAT --output-dir DIR")
        choice(self.format, "format", FORMATS)
        choice(self.quote_match, "quote_match", verify.QUOTE_MATCH, flag=False)
        if self.max_length < 0:
            raise PrefoptError("--max-length must be >= 0")


# ---------------------------------------------------------------- helpers


def _messages(value, role: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return [{"role": m.get("role"), "content": m.get("content")} for m in value]
    raise Skip(f"expected a string or a list of messages, got {type(value).__name__}")


def _split_shared(chosen: list[dict], rejected: list[dict]):
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise Skip("implicit prompt: chosen and rejected share no leading messages")
    return chosen[:n], chosen[n:], rejected[n:]


def _row(prompt: list[dict], chosen: list[dict], rejected: list[dict], meta: dict) -> dict:
    text = json.dumps([prompt, chosen, rejected], ensure_ascii=False)
    return {"id": hashlib.sha1(text.encode()).hexdigest()[:16], "prompt": prompt, "chosen": chosen,
            "rejected": rejected, "meta": meta}


def _first(d: dict, keys: tuple[str, ...]):
    return next((d[k] for k in keys if k in d), None)


# ---------------------------------------------------------------- formats


def from_trl(rec: dict) -> dict:
    if "chosen" not in rec or "rejected" not in rec:
        raise Skip("missing `chosen` or `rejected`")
    c, r = rec["chosen"], rec["rejected"]
    if isinstance(c, str) != isinstance(r, str):
        raise Skip("`chosen` and `rejected` mix the standard and conversational formats")
    if rec.get("prompt") is not None:
        kind = "explicit"
        prompt, chosen, rejected = _messages(rec["prompt"], "user"), _messages(c, "assistant"), _messages(r, "assistant")
    elif isinstance(c, str):
        kind = "implicit"
        n = 0
        while n < min(len(c), len(r)) and c[n] == r[n]:
            n += 1
        cut = max(c.rfind(" ", 0, n + 1), c.rfind("\n", 0, n + 1))  # back to a word boundary
        if cut <= 0 or not c[:cut].strip():
            raise Skip("implicit prompt: chosen and rejected share no text prefix")
        prompt, chosen, rejected = _messages(c[:cut].strip(), "user"), _messages(c[cut:].strip(), "assistant"), \
            _messages(r[cut:].strip(), "assistant")
    else:
        kind = "implicit"
        prompt, chosen, rejected = _split_shared(_messages(c, "assistant"), _messages(r, "assistant"))
    style = "standard" if isinstance(c, str) else "conversational"
    return _row(prompt, chosen, rejected, {"source": "trl", "trl_format": f"{style}/{kind}", "source_id": rec.get("id")})


def parse_hh(text: str) -> list[dict]:
    parts = _HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text)
    if parts[0].strip():
        raise Skip("HH transcript: text before the first `Human:` turn")
    return [{"role": "user" if tag == "Human" else "assistant", "content": content.strip()}
            for tag, content in zip(parts[1::2], parts[2::2])]


def from_hh(rec: dict) -> dict:
    if not isinstance(rec.get("chosen"), str) or not isinstance(rec.get("rejected"), str):
        raise Skip("HH: `chosen` and `rejected` must be transcript strings")
    prompt, chosen, rejected = _split_shared(parse_hh(rec["chosen"]), parse_hh(rec["rejected"]))
    return _row(prompt, chosen, rejected, {"source": "hh", "source_id": rec.get("id")})


def ratings_groups(records: list[dict]) -> list[dict]:
    """Flat rows (one completion each) grouped by prompt, in first-seen order; grouped rows pass through."""
    groups: dict[str, dict] = {}
    out = []
    for rec in records:
        if "completions" in rec or "responses" in rec:
            out.append(rec)
            continue
        key = json.dumps(rec.get("prompt"), sort_keys=True)
        if key not in groups:
            groups[key] = {"prompt": rec.get("prompt"), "completions": [], "rows": 0}
            out.append(groups[key])
        groups[key]["completions"].append(rec)
        groups[key]["rows"] += 1
    return out


def from_ratings(rec: dict, min_margin: float) -> dict:
    if rec.get("prompt") is None:
        raise Skip("missing `prompt`")
    items = rec.get("completions", rec.get("responses"))
    if not isinstance(items, list):
        raise Skip("`completions` must be a list")
    scores = rec.get("ratings", rec.get("scores"))
    pairs = []
    for i, item in enumerate(items):
        text, score = (item, scores[i] if isinstance(scores, list) and i < len(scores) else None) \
            if not isinstance(item, dict) else (_first(item, _TEXT_KEYS), _first(item, _SCORE_KEYS))
        if isinstance(score, (int, float)) and not isinstance(score, bool) and text:
            pairs.append((float(score), i, text))
    if len(pairs) < 2:
        raise Skip("fewer than two rated completions")
    best = max(pairs, key=lambda p: (p[0], -p[1]))
    worst = min(pairs, key=lambda p: (p[0], p[1]))
    margin = best[0] - worst[0]
    if margin <= 0:
        raise Skip("all completions rated equally")
    if margin < min_margin:
        raise Skip("margin below --min-margin")
    return _row(_messages(rec["prompt"], "user"), _messages(best[2], "assistant"), _messages(worst[2], "assistant"),
                {"source": "ratings", "rating_chosen": best[0], "rating_rejected": worst[0], "margin": margin,
                 "n_completions": len(pairs), "source_id": rec.get("id")})


def doc_id(text: str) -> str:
    return "d" + hashlib.sha1(" ".join(text.split()).encode()).hexdigest()[:12]


def from_raft(rec: dict, tpl: Templates, counter, cfg: ImportConfig) -> dict:
    missing = [k for k in ("instruction", "cot_answer", "oracle_context", "context") if not rec.get(k)]
    if missing:
        raise Skip(f"RAFT: missing {', '.join(missing)}")
    wrong = [k for k in ("instruction", "cot_answer", "oracle_context") if not isinstance(rec[k], str)]
    if wrong:
        raise Skip(f"RAFT: {', '.join(wrong)} must be text")
    ctx = rec["context"].get("sentences") if isinstance(rec["context"], dict) else None
    if not isinstance(ctx, list):
        raise Skip("RAFT: `context` has no `sentences`")
    docs = [d for group in ctx for d in (group if isinstance(group, list) else [group]) if isinstance(d, str)]
    oracle, cot = rec["oracle_context"], rec["cot_answer"]
    gold = final_answer(cot, default="")
    if not gold:
        raise Skip("RAFT: cot_answer has no <ANSWER>")
    question = (rec.get("question") or after_documents(rec["instruction"])).strip()
    ids, oid = [doc_id(d) for d in docs], doc_id(oracle)
    seen, candidates = {oid}, []
    quote = extractive.oracle_quote(oracle, question, gold)
    qw = set(extractive.words(question))
    for i, d in zip(ids, docs):  # distractors by how well their best sentence matches the question
        if i in seen:
            continue
        seen.add(i)
        sentence = extractive.best_sentence(d, question, avoid=gold)
        if sentence and not verify.found(sentence, oracle, cfg.quote_match):
            answer = ((extractive.wrong_answer(quote, gold, sentence, question) if quote else None)
                      or sentence.rstrip(" ."))
            answer = " ".join(answer.replace("\u00ad\n", "").split())
            candidates.append((-len(qw & set(extractive.words(sentence))), len(candidates), i, d, sentence, answer))
    if not candidates:
        raise Skip("no distractor yields a rejected answer")
    _, _, source_id, source, sentence, answer = min(candidates)
    row = _row([{"role": "user", "content": rec["instruction"]}], [{"role": "assistant", "content": cot}],
               [{"role": "assistant", "content": tpl.render("raft_rejected.j2", question=question, quote=sentence,
                                                            answer=answer)}],
               {"source": "raft", "question": question, "answer": gold, "oracle_id": oid, "doc_ids": ids,
                "oracle_in_context": oid in ids, "rejected_source_id": source_id, "source_id": rec.get("id"),
                "type": rec.get("type")})
    reason = verify.check_rag(row, oracle, source, gold, counter, cfg.max_length, cfg.quote_match)
    if reason:
        raise Skip(reason)
    return row


# ---------------------------------------------------------------- the command


def run(cfg: ImportConfig) -> dict:
    records = read_rows(cfg.input)
    if not records:
        raise PrefoptError(f"{cfg.input}: no rows")
    counter = verify.TokenCounter(cfg.tokenizer)
    tpl = Templates(cfg.template_dir)
    units = ratings_groups(records) if cfg.format == "ratings" else records
    dedup = quality.Dedup(cfg.near_dup)
    kept, rejects, reasons = [], [], Counter()
    for n, rec in enumerate(units, 1):
        try:
            if cfg.format == "raft":
                row = from_raft(rec, tpl, counter, cfg)
            else:
                row = {"trl": from_trl, "hh": from_hh}[cfg.format](rec) if cfg.format != "ratings" \
                    else from_ratings(rec, cfg.min_margin)
                problem = verify.check_pair(row, counter, cfg.max_length)
                if problem:
                    raise Skip(problem)
            text = "\n".join(m["content"] for f in ("prompt", "chosen", "rejected") for m in row[f])
            dup = dedup.seen(text, f"record {n}")
            if dup:
                raise Skip(dup)
            kept.append(row)
        except Skip as e:
            reason = str(e)
            reasons[quality.reason_key(reason)] += 1
            rejects.append({"record": n, "reason": reason, "input": rec})
    quality.write_split(cfg.output_dir, {"train": kept, "rejects": rejects})
    card = {"command": f"prefopt collect import --format {cfg.format}", "in": len(units),
            "in_unit": "prompts (completions grouped)" if cfg.format == "ratings" else "records",
            "input_records": len(records), "kept": {"train": len(kept)}, "rejected": len(rejects),
            "rejected_by_reason": dict(reasons), "format": cfg.format, "input": cfg.input,
            "max_length": cfg.max_length, "token_counter": counter.name, "near_dup": cfg.near_dup,
            "versions": {"prefopt": prefopt.__version__},
            "lengths": {"train": quality.length_stats(kept, counter)} if kept else {}}
    if cfg.format == "ratings":
        card["min_margin"] = cfg.min_margin
    if cfg.format == "raft":
        card.update({"quote_match": cfg.quote_match,
                     "oracle_rate": round(sum(r["meta"]["oracle_in_context"] for r in kept) / max(len(kept), 1), 4),
                     "distractor_source": "the distractors RAFT showed (`context`): the one whose sentence best "
                                          "matching the question is not in the oracle",
                     "templates": quality.template_versions(tpl, ("raft_rejected.j2",))})
    assert card["in"] == len(kept) + len(rejects)
    quality.write_card(cfg.output_dir, card)
    print(f"prefopt collect import: {card['in']} {card['in_unit']} -> {len(kept)} kept, {len(rejects)} rejected; "
          f"written to {cfg.output_dir}")
    if cfg.strict and rejects:
        raise PrefoptError(f"--strict: {len(rejects)} rejected (reasons in {Path(cfg.output_dir) / 'rejects.jsonl'})")
    return card
