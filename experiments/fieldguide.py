"""A second invented-facts corpus, built apart from prefopt.synthetic: a field guide of creatures no model can know.

Written from scratch so that a recipe tuned on prefopt.synthetic's corpus (experiments/corpora.py) can be checked on
data made another way: other entities (small animals: beetles, moths, newts, ...), other fact types (diet, length,
clutch size, altitude, discoverer, habitat, call, markings, predator, winter shelter), three sentence templates per
fact type, and every document padded with 3 to 5 filler sentences about the creature that hold no asked fact, in a
random order with the fact sentences.

Names are made of consonant-vowel syllables ("Kelomira beetle"). Each creature has a look-alike twin whose name
differs in exactly one syllable ("Kelotira beetle"), of the same kind, with the same fact types stated with the same
templates, and another value for every fact. Twins share a `group` and a `split`: whole pairs go to train or test
(`prefopt collect rag` honours `split`). The `HOLDOUT` fact types occur only in test documents, and each test
document has at least one of them. Deterministic for a seed:

    python experiments/fieldguide.py OUT --seed 0 [--entities 260 --facts-per-doc 3 --test-share 0.25]

OUT gets corpus.jsonl (`id`, `title`, `text`, `kind`, `group`, `split`), questions.jsonl (`question`, `answer`,
`doc_id`, `fact_type`, `qid`: collect rag copies the last two into each row's `meta`) and question_meta.jsonl (per
`qid`: `fact_type`, `unseen`, `twin_doc_id`, `twin_value`), which experiments/harness.py reads to count answers that
give the twin's value. `twin_meta` builds that sidecar for any corpus whose twins share a `group`.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
SYLLABLES = [c + v for c in CONSONANTS for v in VOWELS]  # every syllable is two letters: names split unambiguously
KINDS = ["beetle", "moth", "newt", "snail", "spider", "lizard", "cricket", "shrimp", "finch", "weevil"]
LANDFORMS = ["Fens", "Hills", "Gorge", "Moors", "Dunes", "Delta", "Heath", "Steppe", "Marshes", "Uplands"]
WORDS = {
    "diet": ["lichen", "nectar", "fungi", "algae", "bark", "pollen", "moss", "seeds", "aphids", "mites"],
    "call": ["whistle", "click", "hum", "trill", "croak", "chirp", "rattle", "buzz", "squeak", "drone"],
    "marking": ["stripes", "spots", "rings", "speckles", "chevrons", "bars", "blotches", "bands", "dots", "streaks"],
    "predator": ["owl", "weasel", "shrew", "kestrel", "toad", "stoat", "magpie", "pike", "mole", "crow"],
    "shelter": ["hollow logs", "loose stones", "reed beds", "old burrows", "tree roots", "dry leaves", "rock cracks",
                "empty shells", "peat banks", "ivy tangles"],
}


def syllables(r: random.Random, n: int) -> list[str]:
    return [r.choice(SYLLABLES) for _ in range(n)]


def proper(parts: list[str]) -> str:
    return "".join(parts).capitalize()


def naturalist(r: random.Random) -> str:
    return f"{proper(syllables(r, 2))} {proper(syllables(r, 3))}"


# fact type -> (question, sentence templates, value generator). No value is ever the first word of its sentence
# (collect's rejected answers read a distractor's value after the words before it), and the value ranges of the
# number types do not overlap, nor do the words of the others.
FACTS = {
    "diet": ("What does the {name} feed on?",
             ["The {name} is known to feed on {v}.",
              "In the wild, the {name} will feed on {v} above all else.",
              "Adults of the {name} feed on {v}."],
             lambda r: r.choice(WORDS["diet"])),
    "length": ("How many millimetres long is the {name}?",
               ["A grown {name} is {v} millimetres long.",
                "Measured from head to tail, the {name} is {v} millimetres long.",
                "The {name} grows to a length of {v} millimetres."],
               lambda r: str(r.randint(40, 390))),
    "clutch": ("How many eggs does the {name} lay at a time?",
               ["The {name} lays {v} eggs at a time.",
                "Each clutch of the {name} holds {v} eggs laid at a time.",
                "A female {name} will lay {v} eggs at a time."],
               lambda r: str(r.randint(3, 38))),
    "altitude": ("Up to what altitude in metres is the {name} found?",
                 ["The {name} is found up to an altitude of {v} metres.",
                  "Surveys have found the {name} at an altitude of up to {v} metres.",
                  "Up the slopes, the {name} is found to an altitude of {v} metres."],
                 lambda r: str(r.randint(400, 3900))),
    "discoverer": ("Who first described the {name}?",
                   ["The {name} was first described by {v}.",
                    "The naturalist {v} was the first to describe the {name}.",
                    "The first to describe the {name} was {v}."],
                   naturalist),
    "habitat": ("In which region does the {name} live?",
                ["The {name} lives only in the region of the {v}.",
                 "As a rule the {name} lives in the {v}, a region it never leaves.",
                 "The only region where the {name} lives is the {v}."],
                lambda r: f"{proper(syllables(r, 2))} {r.choice(LANDFORMS)}"),
    "call": ("What sound does the {name} make?",
             ["The sound the {name} makes is a {v}.",
              "When disturbed, the {name} makes a sound like a {v}.",
              "At dusk the {name} makes its sound, a {v}."],
             lambda r: r.choice(WORDS["call"])),
    "marking": ("What markings does the {name} have on its back?",
                ["The {name} has {v} on its back as markings.",
                 "On its back, the {name} has markings of {v}.",
                 "The markings on the back of the {name} are {v}."],
                lambda r: r.choice(WORDS["marking"])),
    "predator": ("Which animal hunts the {name} most?",
                 ["The {name} is hunted most by the {v}.",
                  "Of all animals, the {v} hunts the {name} most.",
                  "The animal that hunts the {name} most is the {v}."],
                 lambda r: r.choice(WORDS["predator"])),
    "shelter": ("Where does the {name} take shelter in cold weather?",
                ["In cold weather, the {name} takes shelter in {v}.",
                 "The {name} takes shelter in {v} when the weather turns cold.",
                 "When cold weather comes, the {name} takes shelter among {v}."],
                lambda r: r.choice(WORDS["shelter"])),
}
HOLDOUT = ("call", "shelter")
# about the creature, holding no fact: no number, no value word, none of the questions' own words but the name
FILLERS = [
    "Specimens of the {name} are kept by a few private collectors.",
    "The {name} appears now and then in early travel journals.",
    "Amateurs often mistake the {name} for a close relative.",
    "Little has been written about the courtship of the {name}.",
    "Good photographs of the {name} remain scarce.",
    "Casual walkers seldom notice the {name}.",
    "Village children tell stories about the {name}.",
    "A painted plate of the {name} hangs in a provincial museum.",
    "Some older guides leave the {name} out altogether.",
    "Scholars still argue over how to classify the {name}.",
    "Keepers report that the {name} fares poorly in captivity.",
    "Every spring, students go looking for the {name}.",
    "Several poems mention the {name} by name.",
    "The {name} has never been studied with great care.",
    "Collectors prize a well kept {name} above many rarer finds.",
    "Nobody knows for sure how common the {name} really was.",
]


def twin(parts: list[str], r: random.Random) -> list[str]:
    """The look-alike's name: one syllable swapped for another."""
    i = r.randrange(len(parts))
    return [*parts[:i], r.choice([s for s in SYLLABLES if s != parts[i]]), *parts[i + 1:]]


def document(r: random.Random, name: str, facts: dict[str, tuple[str, str]]) -> str:
    """The fact sentences (fact type -> (template, value)) and 3 to 5 fillers, in a random order."""
    sentences = [t.format(name=name, v=v) for t, v in facts.values()]
    sentences += [f.format(name=name) for f in r.sample(FILLERS, r.randint(3, 5))]
    r.shuffle(sentences)
    return " ".join(s[0].upper() + s[1:] for s in sentences)


def make_corpus(entities: int = 260, facts_per_doc: int = 3, seed: int = 0, holdout: tuple[str, ...] = HOLDOUT,
                test_share: float = 0.25) -> tuple[list[dict], list[dict]]:
    """(documents, questions) of `entities` documents, twin pairs (2k, 2k+1); one question per fact of a document."""
    if set(holdout) - set(FACTS) or not 0 < facts_per_doc <= len(FACTS) - len(holdout):
        raise ValueError("holdout must name fact types, and facts_per_doc fit the fact types left for train")
    r = random.Random(f"fieldguide-{seed}")
    docs, questions, used = [], [], set()
    while len(docs) < entities:
        kind, parts = r.choice(KINDS), syllables(r, 3)
        pair = [parts, twin(parts, r)]
        names = [f"{proper(p)} {kind}" for p in pair]
        if any(n in used for n in names):
            continue
        used.update(names)
        split = "test" if r.random() < test_share else "train"
        train_types = [t for t in FACTS if t not in holdout]
        if split == "test" and holdout:
            first = r.choice(holdout)
            types = [first, *r.sample([t for t in FACTS if t != first], facts_per_doc - 1)]
        else:
            types = r.sample(train_types, facts_per_doc)
        templates = {t: r.choice(FACTS[t][1]) for t in types}  # twins state their facts alike
        values: dict[str, list[str]] = {}
        for t in types:
            first_value = FACTS[t][2](r)
            while (other := FACTS[t][2](r)) == first_value:
                pass
            values[t] = [first_value, other]
        group = f"pair{len(docs) // 2:04d}"
        for k, name in enumerate(names[: entities - len(docs)]):
            doc_id = f"fg{len(docs):04d}"
            text = document(r, f"{name}", {t: (templates[t], values[t][k]) for t in types})
            docs.append({"id": doc_id, "title": name, "text": text, "kind": kind, "group": group, "split": split})
            questions += [{"question": FACTS[t][0].format(name=name), "answer": values[t][k], "doc_id": doc_id,
                           "fact_type": t, "qid": f"{doc_id}/{t}"} for t in types]
    return docs, questions


def twin_meta(docs: list[dict], questions: list[dict], holdout: tuple[str, ...]) -> list[dict]:
    """Per question (its `qid`): its fact type, whether that type is held out of train (`unseen`), and its
    look-alike twin (the other document of its `group`) with the twin's answer to the same fact type; both None
    where the document has no twin or the twin no such fact."""
    members: dict = {}
    for d in docs:
        members.setdefault(d.get("group"), []).append(d["id"])
    answer = {(q["doc_id"], q["fact_type"]): q["answer"] for q in questions}
    group_of = {d["id"]: d.get("group") for d in docs}
    rows = []
    for q in questions:
        group = group_of[q["doc_id"]]
        others = [i for i in members[group] if i != q["doc_id"]] if group is not None else []
        twin_id = others[0] if len(others) == 1 else None
        rows.append({"qid": q["qid"], "doc_id": q["doc_id"], "fact_type": q["fact_type"],
                     "unseen": q["fact_type"] in holdout, "twin_doc_id": twin_id,
                     "twin_value": answer.get((twin_id, q["fact_type"])) if twin_id else None})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def write_corpus(out: Path, docs: list[dict], questions: list[dict], holdout: tuple[str, ...]) -> None:
    """OUT/corpus.jsonl, OUT/questions.jsonl (as `collect rag` reads them) and OUT/question_meta.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "corpus.jsonl", docs)
    write_jsonl(out / "questions.jsonl", questions)
    write_jsonl(out / "question_meta.jsonl", twin_meta(docs, questions, holdout))


def main() -> None:
    ap = argparse.ArgumentParser(description="Write the field-guide corpus (corpus.jsonl, questions.jsonl, "
                                             "question_meta.jsonl).")
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--entities", type=int, default=260, help="Documents (twin pairs: half as many).")
    ap.add_argument("--facts-per-doc", type=int, default=3)
    ap.add_argument("--test-share", type=float, default=0.25, help="Share of twin pairs in the test split.")
    ap.add_argument("--holdout", nargs="*", default=list(HOLDOUT), choices=list(FACTS),
                    help="Fact types that occur only in test documents.")
    a = ap.parse_args()
    docs, questions = make_corpus(a.entities, a.facts_per_doc, a.seed, tuple(a.holdout), a.test_share)
    write_corpus(a.out, docs, questions, tuple(a.holdout))
    print(f"wrote {len(docs)} documents and {len(questions)} questions to {a.out}")


if __name__ == "__main__":
    main()
