"""The quickstart's invented-facts corpus: documents about entities no model can know, with look-alike twins.

Every entity has a name made of invented syllables, a kind ("guild", "observatory", ...) and a few facts
of different *fact types* (founding year, founder, town, ...: ``FACT_TYPES``). With ``twins=True`` each entity gets
a twin whose name differs by one letter, of the same kind and with the same fact types but other answers, which is
the hardest distractor there is: it matches the question almost word for word and gives a wrong answer. Twins share
a ``group``, so `prefopt collect rag` keeps them on the same side of its train/test split.

``make_corpus`` is deterministic for a seed. The quickstart corpus in ``prefopt/resources/quickstart`` was written by
``python -m prefopt.synthetic prefopt/resources/quickstart --entities 60 --facts-per-doc 2``.
(The outcome experiment's corpora, with held-out fact types and more sentence patterns, are in experiments/.)
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kl", "tr", "vr", "sk"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ou"]
CODAS = ["", "", "n", "r", "l", "sh", "th", "x", "m"]
KINDS = ["guild", "observatory", "monastery", "lighthouse", "academy", "brewery", "orchestra", "canal",
         "botanical garden", "printing house"]
COLORS = ["crimson", "teal", "amber", "violet", "olive", "silver", "indigo", "ochre", "maroon", "turquoise"]
MATERIALS = ["basalt", "cedar", "copper", "granite", "limestone", "marble", "oak", "sandstone", "slate", "walnut"]
ANIMALS = ["heron", "lynx", "otter", "badger", "falcon", "salamander", "stag", "marten", "ibis", "tortoise"]
# fact type -> (sentence template, question template, value generator)
FACT_TYPES = {
    "year": ("{name} was founded in {v}.", "In what year was {name} founded?",
             lambda r: str(r.randint(1420, 1990))),
    "founder": ("{name} was founded by {v}.", "Who founded {name}?", lambda r: _person(r)),
    "town": ("{name} stands in the town of {v}.", "In which town does {name} stand?",
             lambda r: word(r, 2) + r.choice(["holm", "ford", "wick", "mere", "stead"])),
    "color": ("The emblem of {name} is painted {v}.", "What color is the emblem of {name}?",
              lambda r: r.choice(COLORS)),
    "members": ("{name} has exactly {v} members.", "How many members does {name} have?",
                lambda r: str(r.randint(12, 980))),
    "material": ("The main hall of {name} is built of {v}.", "What is the main hall of {name} built of?",
                 lambda r: r.choice(MATERIALS)),
    "mascot": ("The mascot of {name} is {v}.", "What animal is the mascot of {name}?",
               lambda r: _article(r.choice(ANIMALS))),
    "motto": ("The motto of {name} is \"{v}\".", "What is the motto of {name}?",
              lambda r: f"{word(r, 2).capitalize()} {word(r, 2)}"),
}


def word(r: random.Random, syllables: int) -> str:
    return "".join(r.choice(ONSETS) + r.choice(VOWELS) + r.choice(CODAS) for _ in range(syllables))


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _person(r: random.Random) -> str:
    return f"{word(r, 2).capitalize()} {word(r, 2).capitalize()}"


def twin_name(name: str, r: random.Random) -> str:
    """A near-namesake: one vowel of the first word changed."""
    first, rest = name.split(" ", 1)
    idx = [i for i, c in enumerate(first) if c in "aeiou"]
    i = r.choice(idx)
    new = r.choice([v for v in "aeiou" if v != first[i]])
    return f"{first[:i]}{new}{first[i + 1:]} {rest}"


def entity(r: random.Random, twins: bool, used: set[str]) -> tuple[str, list[str]] | None:
    """(kind, names) of a new entity, with its look-alike twin's name when `twins`; None when a name is in `used`."""
    kind = r.choice(KINDS)
    name = f"{word(r, 2).capitalize()} {kind.title()}"
    names = [name, twin_name(name, r)] if twins else [name]
    return None if any(n in used for n in names) else (kind, names)


def add_documents(r: random.Random, kind: str, names: list[str], group: str, facts: dict, docs: list[dict],
                  questions: list[dict], used: set[str], **extra) -> None:
    """One document per name into `docs` and its questions into `questions`: each fact type of `facts` (fact type
    -> (sentence, question, value generator)) with a value drawn from `r`; `extra` goes into every document."""
    for n in names:
        used.add(n)
        doc_id = f"doc{len(docs):04d}"
        sentences = []
        for ft, (sentence, q, gen) in facts.items():
            v = gen(r)
            sentences.append(sentence.format(name=n, v=v))
            questions.append({"question": q.format(name=n), "answer": v, "doc_id": doc_id, "fact_type": ft})
        docs.append({"id": doc_id, "title": n, "text": " ".join(sentences), "kind": kind, "group": group, **extra})


def make_corpus(entities: int = 40, facts_per_doc: int = 3, seed: int = 0,
                twins: bool = True) -> tuple[list[dict], list[dict]]:
    """Return (documents, questions). Documents: id, title, text, kind, group. Questions: question, answer, doc_id,
    fact_type. With twins, entities come in pairs (2k, 2k+1) that share kind, group and fact types."""
    r = random.Random(seed)
    types = list(FACT_TYPES)
    docs, questions, used = [], [], set()
    while len(docs) < entities:
        if (new := entity(r, twins, used)) is None:
            continue
        kind, names = new
        chosen_types = r.sample(types, facts_per_doc)
        group = f"g{len(docs):04d}"  # twins share a group, so a train/test split keeps them together
        add_documents(r, kind, names[: entities - len(docs)], group, {ft: FACT_TYPES[ft] for ft in chosen_types},
                      docs, questions, used)
    return docs, questions


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def write_corpus(out: Path, docs: list[dict], questions: list[dict]) -> None:
    """OUT/corpus.jsonl and OUT/questions.jsonl, as `collect rag --corpus / --questions` read them."""
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "corpus.jsonl", docs)
    write_jsonl(out / "questions.jsonl", questions)
    print(f"wrote {len(docs)} documents and {len(questions)} questions to {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description="Write an invented-facts corpus (corpus.jsonl, questions.jsonl).")
    ap.add_argument("out", type=Path)
    ap.add_argument("--entities", type=int, default=40, help="Documents (twin pairs: half as many).")
    ap.add_argument("--facts-per-doc", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-twins", action="store_true", help="No look-alike twins.")
    a = ap.parse_args()
    write_corpus(a.out, *make_corpus(a.entities, a.facts_per_doc, a.seed, not a.no_twins))


if __name__ == "__main__":
    main()
