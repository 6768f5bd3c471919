"""Invented-facts corpora: documents about entities no model can know, with look-alike twins.

Every entity has a name made of invented syllables, a kind ("guild", "observatory", ...) and a few facts
of different *fact types* (founding year, founder, town, ...). With ``twins=True`` each entity gets a twin
whose name differs by one letter, of the same kind and with the same fact types but other answers, which is
the hardest distractor there is: it matches the question almost word for word and gives a wrong answer.

``make_corpus`` uses the 8 fact types of ``DEFAULT_TYPES`` unless told otherwise; ``MORE_TYPES`` adds 8 other
sentence patterns (docs/recipes.md: with them in training, SFT quotes correctly on held-out fact types far more
often). With ``phrasings=True`` the train documents state each fact in one of three ways (its template or one of
``PHRASINGS``; docs/recipes.md: SFT then copies unseen sentence patterns verbatim far more often, but picks the
right sentence less often). ``make_corpus`` is deterministic for a seed. The quickstart corpus in
``prefopt/resources/quickstart`` was written by
``python -m prefopt.synthetic prefopt/resources/quickstart --entities 60 --facts-per-doc 2``.
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
FLOWERS = ["tulips", "roses", "lilies", "irises", "poppies", "violets", "daisies", "peonies", "asters", "orchids"]
INSTRUMENTS = ["harp", "lute", "oboe", "cello", "flute", "horn", "viola", "drum", "organ", "trumpet"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

# fact type -> (sentence template, question template, value generator)
FACT_TYPES = {
    "year": ("{name} was founded in {v}.", "In what year was {name} founded?",
             lambda r: str(r.randint(1420, 1990))),
    "founder": ("{name} was founded by {v}.", "Who founded {name}?", lambda r: _person(r)),
    "town": ("{name} stands in the town of {v}.", "In which town does {name} stand?",
             lambda r: _word(r, 2) + r.choice(["holm", "ford", "wick", "mere", "stead"])),
    "color": ("The emblem of {name} is painted {v}.", "What color is the emblem of {name}?",
              lambda r: r.choice(COLORS)),
    "members": ("{name} has exactly {v} members.", "How many members does {name} have?",
                lambda r: str(r.randint(12, 980))),
    "material": ("The main hall of {name} is built of {v}.", "What is the main hall of {name} built of?",
                 lambda r: r.choice(MATERIALS)),
    "mascot": ("The mascot of {name} is {v}.", "What animal is the mascot of {name}?",
               lambda r: _article(r.choice(ANIMALS))),
    "motto": ("The motto of {name} is \"{v}\".", "What is the motto of {name}?",
              lambda r: f"{_word(r, 2).capitalize()} {_word(r, 2)}"),
}
DEFAULT_TYPES = list(FACT_TYPES)  # the corpus of docs/recipes.md; MORE_TYPES add other sentence patterns
MORE_TYPES = {
    "river": ("{name} lies on the river {v}.", "On which river does {name} lie?", lambda r: _word(r, 2).capitalize()),
    "bell": ("The great bell of {name} is called {v}.", "What is the great bell of {name} called?",
             lambda r: _word(r, 2).capitalize()),
    "ships": ("{name} owns {v} ships.", "How many ships does {name} own?", lambda r: str(r.randint(2, 90))),
    "flower": ("The garden of {name} grows mostly {v}.", "Which flowers grow mostly in the garden of {name}?",
               lambda r: r.choice(FLOWERS)),
    "instrument": ("The band of {name} plays the {v}.", "Which instrument does the band of {name} play?",
                   lambda r: r.choice(INSTRUMENTS)),
    "festival": ("{name} holds its festival every {v}.", "In which month does {name} hold its festival?",
                 lambda r: r.choice(MONTHS)),
    "tower": ("The tower of {name} is {v} meters tall.", "How many meters tall is the tower of {name}?",
              lambda r: str(r.randint(9, 140))),
    "patron": ("The patron of {name} is Saint {v}.", "Which saint is the patron of {name}?",
               lambda r: _word(r, 2).capitalize()),
}
FACT_TYPES.update(MORE_TYPES)
# other ways to state each fact (the value never first: collect's distractor answers read it after an anchor word)
PHRASINGS = {
    "year": ["The founding of {name} dates to {v}.", "{name} dates from {v}, the year of its founding."],
    "founder": ["It was {v} who founded {name}.", "The founder of {name} was {v}."],
    "town": ["{name} is located in the town of {v}.", "The home town of {name} is {v}."],
    "color": ["{name} paints its emblem {v}.", "The color of the emblem of {name} is {v}."],
    "members": ["The membership of {name} numbers {v}.", "Exactly {v} members belong to {name}."],
    "material": ["{name} built its main hall of {v}.", "The main hall of {name} is made of {v}."],
    "mascot": ["{name} has {v} as its mascot.", "As its mascot, {name} keeps {v}."],
    "motto": ["{name} lives by the motto \"{v}\".", "The words \"{v}\" are the motto of {name}."],
    "river": ["The river {v} flows past {name}.", "{name} was built on the banks of the river {v}."],
    "bell": ["{name} rings a great bell named {v}.", "The name of the great bell of {name} is {v}."],
    "ships": ["The fleet of {name} counts {v} ships.", "{name} has a fleet of {v} ships."],
    "flower": ["Mostly {v} grow in the garden of {name}.", "{name} fills its garden mostly with {v}."],
    "instrument": ["{name} has a band that plays the {v}.", "In the band of {name}, everyone plays the {v}."],
    "festival": ["Every {v}, {name} holds its festival.", "The festival of {name} takes place each {v}."],
    "tower": ["{name} has a tower {v} meters tall.", "The tower of {name} rises {v} meters."],
    "patron": ["{name} honours Saint {v} as its patron.", "Saint {v} is the patron of {name}."],
}


def type_names(more: bool = False) -> list[str]:
    """The fact types of a corpus: DEFAULT_TYPES, with `more` also MORE_TYPES."""
    return DEFAULT_TYPES + list(MORE_TYPES) if more else DEFAULT_TYPES


def _word(r: random.Random, syllables: int) -> str:
    return "".join(r.choice(ONSETS) + r.choice(VOWELS) + r.choice(CODAS) for _ in range(syllables))


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _person(r: random.Random) -> str:
    return f"{_word(r, 2).capitalize()} {_word(r, 2).capitalize()}"


def _twin_name(name: str, r: random.Random) -> str:
    """A near-namesake: one vowel of the first word changed."""
    first, rest = name.split(" ", 1)
    idx = [i for i, c in enumerate(first) if c in "aeiou"]
    i = r.choice(idx)
    new = r.choice([v for v in "aeiou" if v != first[i]])
    return f"{first[:i]}{new}{first[i + 1:]} {rest}"


def make_corpus(entities: int = 40, facts_per_doc: int = 3, seed: int = 0, twins: bool = True,
                fact_types: list[str] | None = None, holdout: tuple[str, ...] = (),
                test_share: float = 0.0, phrasings: bool = False) -> tuple[list[dict], list[dict]]:
    """Return (documents, questions). Documents: id, title, text, kind, group. Questions: question, answer, doc_id,
    fact_type. With twins, entities come in pairs (2k, 2k+1) that share kind and fact types.

    With `test_share` > 0, each group goes to the test split with that probability and its documents carry
    `split` ("train" or "test", which `prefopt collect rag` honours). The `holdout` fact types then never occur
    in the train split, and every test document has at least one of them.

    With `phrasings`, each fact of a train document (all documents without `test_share`) is stated in one of three
    ways: its sentence template or one of its `PHRASINGS`, drawn per twin pair and fact type (twins keep alike) from
    a random stream of its own, so the values, the questions and the test documents are those of the same seed
    without it."""
    r, rp = random.Random(seed), random.Random(f"phrasings-{seed}")
    types = fact_types or DEFAULT_TYPES
    if set(holdout) - set(types) or (holdout and not test_share):
        raise ValueError("holdout must name fact types in use, and needs test_share > 0")
    docs, questions, used = [], [], set()
    while len(docs) < entities:
        kind = r.choice(KINDS)
        name = f"{_word(r, 2).capitalize()} {kind.title()}"
        names = [name, _twin_name(name, r)] if twins else [name]
        if any(n in used for n in names):
            continue
        split = ("test" if r.random() < test_share else "train") if test_share else None
        if split == "test" and holdout:
            first = r.choice(holdout)
            chosen_types = [first, *r.sample([t for t in types if t != first], facts_per_doc - 1)]
        else:
            chosen_types = r.sample([t for t in types if t not in holdout], facts_per_doc)
        group = f"g{len(docs):04d}"  # twins share a group, so a train/test split keeps them together
        templates = {ft: rp.choice([FACT_TYPES[ft][0], *PHRASINGS[ft]]) if phrasings and split != "test"
                     else FACT_TYPES[ft][0] for ft in chosen_types}
        for n in names[: entities - len(docs)]:
            used.add(n)
            doc_id = f"doc{len(docs):04d}"
            sentences = []
            for ft in chosen_types:
                _, q, gen = FACT_TYPES[ft]
                v = gen(r)
                sentences.append(templates[ft].format(name=n, v=v))
                questions.append({"question": q.format(name=n), "answer": v, "doc_id": doc_id, "fact_type": ft})
            docs.append({"id": doc_id, "title": n, "text": " ".join(sentences), "kind": kind, "group": group,
                         **({"split": split} if split else {})})
    return docs, questions


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description="Write an invented-facts corpus (corpus.jsonl, questions.jsonl).")
    ap.add_argument("out", type=Path)
    ap.add_argument("--entities", type=int, default=40)
    ap.add_argument("--facts-per-doc", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-twins", action="store_true")
    ap.add_argument("--test-share", type=float, default=0.0, help="Share of twin pairs pinned to the test split.")
    ap.add_argument("--holdout", nargs="*", default=[], choices=list(FACT_TYPES),
                    help="Fact types that occur only in the test split (needs --test-share).")
    ap.add_argument("--more-fact-types", action="store_true", help="Also the 8 fact types of MORE_TYPES.")
    ap.add_argument("--phrasings", action="store_true", help="Train documents state each fact in one of 3 ways.")
    a = ap.parse_args()
    docs, questions = make_corpus(a.entities, a.facts_per_doc, a.seed, not a.no_twins,
                                  fact_types=type_names(a.more_fact_types), holdout=tuple(a.holdout),
                                  test_share=a.test_share, phrasings=a.phrasings)
    a.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(a.out / "corpus.jsonl", docs)
    write_jsonl(a.out / "questions.jsonl", questions)
    print(f"wrote {len(docs)} documents and {len(questions)} questions to {a.out}")


if __name__ == "__main__":
    main()
