"""The outcome experiment's invented-facts corpora: prefopt.synthetic's corpus with a pinned train/test split,
fact types held out of train, 8 more fact types and other phrasings of each fact.

``make_corpus`` uses the 8 fact types of ``DEFAULT_TYPES`` (prefopt.synthetic.FACT_TYPES) unless told otherwise;
``MORE_TYPES`` adds 8 other sentence patterns (LOG.md: with them in training, SFT quotes correctly on held-out fact
types far more often). With ``phrasings=True`` the train documents state each fact in one of three ways (its
template or one of ``PHRASINGS``; LOG.md: SFT then copies unseen sentence patterns verbatim far more often, but
picks the right sentence less often). Without a split, held-out types or phrasings it writes prefopt.synthetic's
corpus, document for document (test_corpora.py checks it). Deterministic for a seed:

    python experiments/corpora.py OUT --entities 260 --facts-per-doc 2 --test-share 0.25 --holdout material mascot
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from prefopt.synthetic import FACT_TYPES as BASE_TYPES
from prefopt.synthetic import add_documents, entity, word, write_corpus

FLOWERS = ["tulips", "roses", "lilies", "irises", "poppies", "violets", "daisies", "peonies", "asters", "orchids"]
INSTRUMENTS = ["harp", "lute", "oboe", "cello", "flute", "horn", "viola", "drum", "organ", "trumpet"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

DEFAULT_TYPES = list(BASE_TYPES)  # the outcome experiment's default corpus; MORE_TYPES add other sentence patterns
MORE_TYPES = {
    "river": ("{name} lies on the river {v}.", "On which river does {name} lie?", lambda r: word(r, 2).capitalize()),
    "bell": ("The great bell of {name} is called {v}.", "What is the great bell of {name} called?",
             lambda r: word(r, 2).capitalize()),
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
               lambda r: word(r, 2).capitalize()),
}
FACT_TYPES = {**BASE_TYPES, **MORE_TYPES}
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
        if (new := entity(r, twins, used)) is None:
            continue
        kind, names = new
        split = ("test" if r.random() < test_share else "train") if test_share else None
        if split == "test" and holdout:
            first = r.choice(holdout)
            chosen_types = [first, *r.sample([t for t in types if t != first], facts_per_doc - 1)]
        else:
            chosen_types = r.sample([t for t in types if t not in holdout], facts_per_doc)
        group = f"g{len(docs):04d}"  # twins share a group, so a train/test split keeps them together
        templates = {ft: rp.choice([FACT_TYPES[ft][0], *PHRASINGS[ft]]) if phrasings and split != "test"
                     else FACT_TYPES[ft][0] for ft in chosen_types}
        facts = {ft: (templates[ft], *FACT_TYPES[ft][1:]) for ft in chosen_types}
        add_documents(r, kind, names[: entities - len(docs)], group, facts, docs, questions, used,
                      **({"split": split} if split else {}))
    return docs, questions


def main() -> None:
    ap = argparse.ArgumentParser(description="Write an outcome-experiment corpus (corpus.jsonl, questions.jsonl).")
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
    write_corpus(a.out, *make_corpus(a.entities, a.facts_per_doc, a.seed, not a.no_twins,
                                     fact_types=type_names(a.more_fact_types), holdout=tuple(a.holdout),
                                     test_share=a.test_share, phrasings=a.phrasings))


if __name__ == "__main__":
    main()
