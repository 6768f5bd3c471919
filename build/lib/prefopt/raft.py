"""The RAFT answer format, read in one place (pure python, no torch).

A prompt shows its documents as ``<DOCUMENT>...</DOCUMENT>`` blocks, in the order of ``meta.doc_ids``
(``meta.oracle_id`` names the oracle). An answer quotes between ``##begin_quote##`` and ``##end_quote##`` and
gives its final answer after ``<ANSWER>:``. The first ``<ANSWER>:`` counts, up to the next ``##`` marker (a
model that runs on into another ``##Reason:`` has ended its answer there).
"""

from __future__ import annotations

import re

ANSWER_TAG = "<ANSWER>:"
BEGIN_QUOTE, END_QUOTE = "##begin_quote##", "##end_quote##"
DOCUMENT_START, DOCUMENT_END = "<DOCUMENT>", "</DOCUMENT>"
QUOTE = re.compile(re.escape(BEGIN_QUOTE) + "(.*?)" + re.escape(END_QUOTE), re.S)
DOCUMENT = re.compile(re.escape(DOCUMENT_START) + "(.*?)" + re.escape(DOCUMENT_END), re.S)


def has_answer(text: str) -> bool:
    """The text has an ``<ANSWER>:`` tag."""
    return ANSWER_TAG in text


def final_answer(text: str, default: str | None = None) -> str:
    """The text after the first ``<ANSWER>:`` up to the next ``##``, stripped. Without a tag: `default` when
    given, else the text itself up to its first ``##`` (what eval scores of an untagged answer)."""
    if ANSWER_TAG in text:
        text = text.split(ANSWER_TAG, 1)[1]
    elif default is not None:
        return default
    return text.split("##", 1)[0].strip()


def quote_spans(text: str) -> list[str]:
    """Every closed ``##begin_quote##...##end_quote##`` span, as written (empty ones included)."""
    return QUOTE.findall(text)


def quotes(text: str) -> list[str]:
    """The closed quote spans, whitespace-collapsed, empty ones dropped (a quote cut off by the generation
    budget has no end marker and is not counted)."""
    return [q for q in (" ".join(m.split()) for m in quote_spans(text)) if q]


def prompt_documents(prompt: list[dict] | str) -> list[str]:
    """The ``<DOCUMENT>...</DOCUMENT>`` texts of a prompt (a list of chat messages or a string), in order."""
    text = prompt if isinstance(prompt, str) else "\n".join(str(m.get("content", "")) for m in prompt)
    return DOCUMENT.findall(text)


def after_documents(text: str) -> str:
    """What follows the last ``</DOCUMENT>`` of a prompt (all of it when it has none), stripped."""
    return text.rsplit(DOCUMENT_END, 1)[-1].strip()


def split_documents(row: dict) -> tuple[str | None, list[str]]:
    """(oracle text, distractor texts) of a triple, read from its prompt by ``meta.doc_ids`` and
    ``meta.oracle_id``. The oracle is None when it is not shown; when the prompt's documents do not line up with
    ``doc_ids`` nothing can be attributed: ``(None, [])``."""
    meta = row.get("meta") or {}
    docs = prompt_documents(row.get("prompt") or [])
    ids = list(meta.get("doc_ids") or [])
    if not docs or len(ids) != len(docs):
        return None, []
    oracle_id = meta.get("oracle_id")
    oracle = docs[ids.index(oracle_id)] if oracle_id in ids else None
    return oracle, [d for i, d in zip(ids, docs) if i != oracle_id]


def reverse_documents(row: dict) -> dict:
    """`row` with the ``<DOCUMENT>`` blocks of each prompt message (and ``meta.doc_ids``) in reverse order, all
    else as it was, and ``meta.documents_reversed`` set."""

    def flip(content: str) -> str:
        spans = list(DOCUMENT.finditer(content))
        out, end = [], 0
        for span, other in zip(spans, reversed(spans)):
            out += [content[end:span.start()], other.group(0)]
            end = span.end()
        return "".join(out) + content[end:]

    meta = row.get("meta") or {}
    return {**row, "prompt": [{**m, "content": flip(m["content"])} for m in row["prompt"]],
            "meta": {**meta, "doc_ids": list(reversed(meta.get("doc_ids") or [])), "documents_reversed": True}}
