"""The extractive generator: RAFT-format answers built from the documents' own sentences, no LLM.

The chosen answer quotes the oracle sentence that holds the gold answer. The rejected answer quotes the
distractor sentence that best matches the question, and answers with the words of that sentence that
stand where the gold answer stands in the oracle sentence (between the same words), so it reads just
as confident and is grounded in the distractor alone.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def normalize(text: str) -> str:
    return " ".join(words(text))


def contains(haystack: str, needle: str) -> bool:
    """Whole-word, case- and punctuation-insensitive containment."""
    n = normalize(needle)
    return bool(n) and f" {n} " in f" {normalize(haystack)} "


def best_sentence(text: str, question: str, gold: str | None = None, avoid: str | None = None) -> str | None:
    """The sentence of `text` sharing most words with the question; with `gold`, only sentences that contain
    it; with `avoid`, only sentences that do not."""
    q = set(words(question))
    candidates = [s for s in sentences(text)
                  if (gold is None or contains(s, gold)) and (avoid is None or not contains(s, avoid))]
    if not candidates:
        return None
    return max(candidates, key=lambda s: len(q & set(words(s))))


# words that say nothing of what a sentence is about, nor are a value
_FUNCTION = {"a", "an", "the", "of", "to", "in", "on", "at", "by", "for", "from", "with", "as", "and", "or", "is",
             "are", "was", "were", "be", "been", "has", "have", "had", "its", "it", "that", "this", "which", "what",
             "who", "where", "when", "how", "does", "do", "did"}


def _shape(ws: list[str]) -> tuple[bool, bool]:
    """What kind of value the words are: (holds a digit, starts with a capital letter)."""
    return any(c.isdigit() for w in ws for c in w), ws[0][:1].isupper()


def aligned_answer(oracle_sentence: str, gold: str, other_sentence: str, question: str = "",
                   title: str = "") -> str | None:
    """The words of `other_sentence` in the slot where `gold` sits in `oracle_sentence`: as many words as the gold
    answer has, where the most words next to it match the words next to the gold answer (before it, after it, the
    sentence's end). With the question (and the title of the other sentence's document), a slot must also look like
    the gold answer (a number for a number, a name for a name), hold a word that is not a function word, and no
    word of the question or the title that the gold answer does not hold; and the sentence must share a word
    with the question beyond its title, so that "The Vezo snail appears in early travel journals." gives no
    answer to "In which region does the Risa snail live?"."""
    o_words = _WORD.findall(oracle_sentence)
    g_words = _WORD.findall(gold)
    lower = [w.lower() for w in o_words]
    g_lower = [w.lower() for w in g_words]
    start = next((i for i in range(len(lower)) if lower[i:i + len(g_lower)] == g_lower), None)
    if start is None or start == 0 or not g_words:
        return None
    before, after = lower[:start], lower[start + len(g_words):]
    d_words = _WORD.findall(other_sentence)
    d_lower = [w.lower() for w in d_words]
    asked, named = set(words(question)), set(words(title))
    if question and not (asked - named - _FUNCTION) & set(d_lower):
        return None
    off_topic = (asked | named) - set(g_lower)
    best, best_score = None, 0
    for i in range(1, len(d_words) - len(g_words) + 1):
        j = i + len(g_words)
        slot = d_lower[i:j]
        pre = 0
        while pre < i and pre < len(before) and d_lower[i - 1 - pre] == before[-1 - pre]:
            pre += 1
        post = 0
        while j + post < len(d_words) and post < len(after) and d_lower[j + post] == after[post]:
            post += 1
        score = pre + post + (j == len(d_words) and not after)  # both slots end their sentences
        if question and (_shape(d_words[i:j]) != _shape(g_words) or _FUNCTION.issuperset(slot)
                         or off_topic & set(slot)):
            continue
        if score and score >= best_score:
            best, best_score = i, score
    return " ".join(d_words[best:best + len(g_words)]) if best is not None else None


def gold_span(text: str, gold: str) -> tuple[int, int] | None:
    """Where the gold answer first stands in `text` (matched ignoring case), as (start, end); None if absent."""
    start = text.lower().find(gold.strip().lower())
    return (start, start + len(gold.strip())) if start >= 0 else None


def misquote(quote: str, gold: str, other: str) -> str | None:
    """`quote` with the gold answer's span replaced by `other`: a fabricated quote that reads like the oracle
    (the asked entity's sentence with a look-alike's value); None if gold is absent."""
    span = gold_span(quote, gold)
    if span is None or not other.strip():
        return None
    return quote[:span[0]] + other.strip() + quote[span[1]:]


def loose(quote: str, gold: str, rng) -> str | None:
    """`quote` with one inner word (`rng` picks it) left out, never one of the gold answer's: the right answer
    with a quote that is not verbatim, as "The main hall of Ruxpeth Academy built of granite." for "... is built
    of granite." (the first or last word left out would leave a verbatim part); None if there is no such word."""
    start, end = gold_span(quote, gold) or (0, 0)
    spans = list(re.finditer(r"\S+\s*", quote))[1:-1]
    spans = [m for m in spans if _WORD.search(m.group()) and (m.end() <= start or m.start() >= end)]
    if not spans:
        return None
    m = rng.choice(spans)
    return (quote[:m.start()] + quote[m.end():]).strip()


def reworded(sentence: str, value: str, gold: str, title: str, oracle_title: str) -> str | None:
    """A distractor's `sentence` made to state the oracle's fact: its `value` replaced by the gold answer and its
    document's `title` by the oracle's. The right answer in a quote that no document holds, as "Measured from head
    to tail, the Sekefe shrimp is 97 millimetres long." for the oracle's "A grown Sekefe shrimp is 97 millimetres
    long." (what SFT models write for an oracle phrased unlike the sentences they copy best); None unless the
    sentence holds both, apart."""
    def span(part: str) -> tuple[int, int] | None:  # whole words, any case
        m = re.search(rf"(?<!\w){re.escape(part.strip())}(?!\w)", sentence, re.I) if part.strip() else None
        return m.span() if m else None

    v, t = span(value), span(title)
    if v is None or t is None or not oracle_title.strip() or not gold.strip() or (v[0] < t[1] and t[0] < v[1]):
        return None
    for (start, end), new in sorted(((v, gold.strip()), (t, oracle_title.strip())), reverse=True):
        sentence = sentence[:start] + new + sentence[end:]
    return sentence


_AUX = {"is", "are", "was", "were", "does", "do", "did", "has", "have", "had"}


def echo(question: str, gold: str) -> str | None:
    """A quote made of the question's words instead of the oracle's: the question as a statement, with the gold
    answer added, as "The main hall of Ruxpeth Academy built of granite." for "What is the main hall of Ruxpeth
    Academy built of?" (what the SFT models wrote for sentence patterns they never trained on: the right answer,
    a quote in no document). The question loses its words up to its first auxiliary verb (is, does, ...) among
    its first four, or else its first word; None if nothing is left."""
    ws = question.strip().rstrip("?").split()
    cut = next((i + 1 for i, w in enumerate(ws[:4]) if w.lower() in _AUX), 1)
    if not ws[cut:] or not gold.strip():
        return None
    text = " ".join(ws[cut:] + [gold.strip().rstrip(".")])
    return text[0].upper() + text[1:] + "."


def misread(quote: str, question: str, gold: str) -> str | None:
    """A wrong answer read from the right quote: the longest run of words of `quote` that the question writes
    capitalized (after its first word) and the gold answer does not hold: the asked entity's name, as in "The
    mascot of Naerfil Academy is an otter." -> "Naerfil Academy"; None if there is none."""
    asked = {w.lower() for w in _WORD.findall(question)[1:] if w[:1].isupper()}
    avoid = set(words(gold))
    best, run = [], []
    for w in _WORD.findall(quote) + [""]:
        if w[:1].isupper() and w.lower() in asked and w.lower() not in avoid:
            run.append(w)
            continue
        best, run = max(best, run, key=len), []
    return " ".join(best) or None


def oracle_quote(text: str, question: str, gold: str) -> str | None:
    """What the chosen answer quotes: the oracle sentence holding the gold answer (a short answer), or the
    gold answer's own span in the oracle when it runs over several sentences (a long answer)."""
    sentence = best_sentence(text, question, gold=gold)
    if sentence is not None:
        return sentence
    span = gold_span(text, gold) if contains(text, gold) else None
    return text[span[0]:span[1]] if span else None


def is_long(quote: str, gold: str) -> bool:
    """A long answer is most of its quote (PubMedQA's conclusions, RAFT's sentence answers)."""
    return len(words(gold)) >= 0.5 * max(len(words(quote)), 1)


def wrong_answer(quote: str, gold: str, sentence: str, question: str = "", title: str = "") -> str | None:
    """The rejected answer read from a distractor `sentence`: the words in the gold answer's slot (short
    answers), or the sentence itself (long answers)."""
    if is_long(quote, gold):
        return sentence.rstrip(" .")
    return aligned_answer(quote, gold, sentence, question, title)
