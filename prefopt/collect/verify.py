"""Verification of preference rows, so that no bad pair reaches training.

RAG rows (from `collect rag` and `collect import --format raft`) must pass every rule below; a failing row
goes to rejects.jsonl with the rule's reason:

- every ``##begin_quote##...##end_quote##`` in chosen appears verbatim in the oracle (and, when the oracle is
  in the prompt, chosen quotes at least once);
- rejected quotes at least once, every quote appears in its source distractor and none in the oracle
  (``--rejected misquote``: the oracle's sentence with only the answer swapped; ``misread``: the oracle's
  sentence itself, so the two answers differ only after ``<ANSWER>:``; ``loose``: only words of the oracle, not
  verbatim; ``echo``: only words of the question and the gold answer; ``reworded``: only words of its
  distractor, the question and the gold answer);
- chosen != rejected, and the rejected answer (after ``<ANSWER>:``) != the gold answer (``loose``, ``echo`` and
  ``reworded``: == the gold answer, the quote is what is wrong);
- prompt + chosen and prompt + rejected each fit ``--max-length`` tokens, so that no completion is
  truncated to nothing in training.

"Verbatim" (``quote_match: text``, the default) compares after collapsing runs of whitespace, removing soft
hyphens (PDF line breaks) and the quotation marks or spaces around the quote; ``quote_match: words``
compares the lower-cased word sequences, ignoring punctuation (looser: it accepts quotes whose punctuation
or quotation marks an LLM changed).

Token counts use the target tokenizer's chat template when ``--tokenizer`` is given; otherwise a proxy that
counts each run of word characters and each other non-space character as one token (``\\w+|[^\\w\\s]``).
On English prose the proxy is within about ±20% of a BPE tokenizer's count (it overcounts punctuation,
undercounts long rare words), so leave some headroom in ``--max-length`` when relying on it.
"""

from __future__ import annotations

from prefopt.collect import extractive
from prefopt.data import PROXY, count_tokens, row_problem
from prefopt.raft import final_answer, quote_spans

QUOTE_MATCH = ("text", "words")
_EDGE = "\"'“”‘’«» \t\n"


def _clean(text: str) -> str:
    return " ".join(text.replace("\u00ad\n", "").replace("\u00ad", "").split())


def found(quote: str, doc: str, mode: str = "text") -> bool:
    """Whether `quote` appears in `doc` under the `mode` rule (see the module docstring)."""
    if mode == "words":
        return extractive.contains(_clean(doc), _clean(quote))
    q = _clean(quote).strip(_EDGE)
    return bool(q) and q in _clean(doc)


class TokenCounter:
    """Counts tokens of a prompt + completion: the tokenizer's chat template, or the regex proxy."""

    def __init__(self, tokenizer: str | None = None):
        self.name = tokenizer or "regex proxy \\w+|[^\\w\\s]"
        self.tok = None
        if tokenizer:
            from prefopt.models import load_tokenizer, resolve

            self.tok = load_tokenizer(resolve(tokenizer))

    def text(self, text: str) -> int:
        if self.tok is None:
            return len(PROXY.findall(text))
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def messages(self, messages: list[dict]) -> int:
        return count_tokens(messages, self.tok)

    def pair(self, row: dict) -> tuple[int, int]:
        """Tokens of prompt + chosen and of prompt + rejected."""
        return (self.messages(row["prompt"] + row["chosen"]), self.messages(row["prompt"] + row["rejected"]))


def check_length(row: dict, counter: TokenCounter, max_length: int | None) -> str | None:
    if not max_length:
        return None
    c, r = counter.pair(row)
    if max(c, r) > max_length:
        return f"longer than --max-length ({max(c, r)} > {max_length} tokens)"
    return None


def check_pair(row: dict, counter: TokenCounter, max_length: int | None) -> str | None:
    """The rules every preference row obeys: well-formed messages, chosen != rejected, within the budget."""
    return row_problem(row) or check_length(row, counter, max_length)


def _occurrences(text: str, part: str) -> list[int]:
    """Where `part` starts in `text`, every place (overlaps too)."""
    return [i for i in range(len(text) - len(part) + 1) if text.startswith(part, i)]


def check_rag(row: dict, oracle: str, source: str, gold: str, counter: TokenCounter,
              max_length: int | None, mode: str = "text") -> str | None:
    """None when a RAG row passes every rule, else the first failing rule as a reason."""
    problem = row_problem(row)
    if problem:
        return problem
    chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
    c_quotes, r_quotes = quote_spans(chosen), quote_spans(rejected)  # an empty quote fails `found`
    if row["meta"].get("oracle_in_context", True) and not c_quotes:
        return "chosen quotes nothing from the oracle"
    if any(not found(q, oracle, mode) for q in c_quotes):
        return "chosen quote not found verbatim in the oracle"
    if not r_quotes:
        return "rejected quotes nothing"
    r_answer = final_answer(rejected, default="")
    kind = row["meta"].get("rejected_kind")
    if kind == "misquote":  # the oracle's sentence with the answer swapped
        if not r_answer or any(not any(found(q[:i] + gold + q[i + len(r_answer):], oracle, mode)
                                       for i in _occurrences(q, r_answer)) for q in r_quotes):
            return "misquote is not an oracle sentence with the answer swapped"
    elif kind == "misread":  # the right quote, a wrong answer: only the answer differs
        if any(not found(q, oracle, mode) for q in r_quotes):
            return "misread does not quote the oracle"
    elif kind == "loose":  # the right answer, a quote of the oracle's words that is not verbatim
        if any(not set(extractive.words(q)) <= set(extractive.words(oracle)) for q in r_quotes):
            return "loose quotes words that are not the oracle's"
    elif kind == "echo":  # the right answer, a quote of the question's words
        allowed = set(extractive.words(row["meta"].get("question", ""))) | set(extractive.words(gold))
        if any(not set(extractive.words(q)) <= allowed for q in r_quotes):
            return "echo quotes words that are not the question's"
    elif kind == "reworded":  # the right answer, a distractor's sentence with the asked entity's name and value
        allowed = set(extractive.words(source)) | set(extractive.words(row["meta"].get("question", ""))) | \
            set(extractive.words(gold))
        if any(not set(extractive.words(q)) <= allowed for q in r_quotes):
            return "reworded quotes words that are not its distractor's, the question's or the answer's"
    elif any(not found(q, source, mode) for q in r_quotes):
        return "rejected quote not found in its source distractor"
    if kind != "misread" and any(found(q, oracle, mode) for q in r_quotes):
        return "rejected quote appears in the oracle"
    if not r_answer:
        return "rejected has no <ANSWER>"
    right = kind in ("loose", "echo", "reworded")  # their answer is the gold one; the quote is what is wrong
    if (extractive.normalize(r_answer) == extractive.normalize(gold)) != right:
        return f"{kind} answer is not the gold answer" if right else "rejected answer equals the gold answer"
    return check_length(row, counter, max_length)
