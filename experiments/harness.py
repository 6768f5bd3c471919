"""Does the recipe generalize? The user path on three corpora built differently, several seeds each.

    python experiments/harness.py --out runs/harness                       # prefopt's defaults, 3 corpora x 3 seeds
    python experiments/harness.py --out runs/h-beta --dpo "--beta 0.3"     # a variant, measured the same way
    python experiments/harness.py --out runs/harness --dry-run             # print the commands, run nothing
    python experiments/harness.py --out runs/harness --report-only         # the table of what has run so far

Corpora: `synthetic` (prefopt.synthetic's invented facts as experiments/corpora.py and rag_outcome.py build them:
260 documents, 2 facts each, a quarter of the twin pairs in test, `material` and `mascot` held out of train),
`fieldguide` (experiments/fieldguide.py: a corpus that shares no code, names, fact types or sentence templates with
it; 260 documents, 3 facts each, `call` and `shelter` held out) and `pubmedqa` (../shared/data, all 500 questions).
Of an invented corpus, `--train-questions` questions of train documents and `--test-questions` of each kind (unseen
and seen fact types) of test documents go to collect, drawn by the seed; the seed also makes the corpus and is
collect's `--seed` (for PubMedQA, the train/test split).

Each (corpus, seed) runs the user path of README's tour in OUT/CORPUS/seedN, each stage printed before it runs
and skipped when its output is there (so a killed run resumes):

    prefopt collect rag --corpus C --questions Q --output-dir data --seed N   [--collect ...]
    prefopt sft --model M --data data/train.jsonl --output-dir sft            [--sft ...]
    prefopt dpo --model sft --output-dir dpo                                  [--dpo ...]
    prefopt eval --models M sft dpo --data data/test.jsonl --output-dir eval  [--eval ...]

No corpus gets flags of its own (PubMedQA's longest rows, over the default max length of 2048 tokens, are
rejected by sft as a user's would be). --collect, --sft and --dpo also take the settings prefopt
reads only from a --config file (rag_outcome.py's `prefopt_command`: they go to settings.yaml in the stage's dir).
One --out holds one set of flags (OUT/flags.json); measure a variant in another --out.

From each eval's generations.jsonl it reports, per corpus and model (base, SFT, DPO), per seed and as the mean with
the min-max range over seeds (the JSON adds the sample standard deviation): answer accuracy on the held-out questions
of unseen and of seen fact types, quote precision (quotes found verbatim in the oracle / quotes), and twin errors
(wrong final answers that give the look-alike twin's value, among the prompts that show the twin:
question_meta.jsonl); for PubMedQA the yes/no/maybe accuracy against always answering "yes". `overall` is what a
default is chosen by: per model, the mean over every corpus and seed of the unseen-type accuracy (PubMedQA: the
yes/no/maybe accuracy). OUT/harness.json holds it all; the markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpora  # noqa: E402
import fieldguide  # noqa: E402
from rag_outcome import PUBMEDQA, jemalloc_env, prefopt_command, stage  # noqa: E402

CORPORA = ("synthetic", "fieldguide", "pubmedqa")
HOLDOUT = {"synthetic": ("material", "mascot"), "fieldguide": fieldguide.HOLDOUT}
FACTS_PER_DOC = {"synthetic": 2, "fieldguide": 3}
MODELS = ("base", "sft", "dpo")


def invented_corpus(corpus: str, seed: int, entities: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(documents, questions, question meta) of an invented-facts corpus; every question has a `qid`."""
    if corpus == "synthetic":
        docs, questions = corpora.make_corpus(entities, FACTS_PER_DOC[corpus], seed, twins=True,
                                              holdout=HOLDOUT[corpus], test_share=0.25)
        for q in questions:
            q["qid"] = f"{q['doc_id']}/{q['fact_type']}"
    else:
        docs, questions = fieldguide.make_corpus(entities, FACTS_PER_DOC[corpus], seed, HOLDOUT[corpus])
    return docs, questions, fieldguide.twin_meta(docs, questions, HOLDOUT[corpus])


def pick_questions(docs: list[dict], questions: list[dict], meta: list[dict], seed: int, n_train: int,
                   n_test: int) -> list[dict]:
    """`n_train` questions of train documents, then `n_test` of test documents of unseen and of seen fact types."""
    split, unseen = {d["id"]: d["split"] for d in docs}, {m["qid"]: m["unseen"] for m in meta}
    r = random.Random(seed)
    test = [q for q in questions if split[q["doc_id"]] == "test"]
    pools = (([q for q in questions if split[q["doc_id"]] == "train"], n_train),
             ([q for q in test if unseen[q["qid"]]], n_test), ([q for q in test if not unseen[q["qid"]]], n_test))
    return [q for pool, n in pools for q in r.sample(pool, min(n, len(pool)))]


def write_inputs(corpus: str, seed: int, a: argparse.Namespace, inputs: Path) -> None:
    """inputs/corpus.jsonl and questions.jsonl (and question_meta.jsonl of the picked questions)."""
    inputs.mkdir(parents=True, exist_ok=True)
    if corpus == "pubmedqa":
        from prefopt.collect.pubmedqa import convert

        convert(PUBMEDQA, inputs)
        return
    docs, questions, meta = invented_corpus(corpus, seed, a.entities)
    picked = pick_questions(docs, questions, meta, seed, a.train_questions, a.test_questions)
    ids = {q["qid"] for q in picked}
    fieldguide.write_jsonl(inputs / "question_meta.jsonl", [m for m in meta if m["qid"] in ids])
    fieldguide.write_jsonl(inputs / "corpus.jsonl", docs)
    fieldguide.write_jsonl(inputs / "questions.jsonl", picked)  # last: it marks the inputs as written


def run_dir(out: Path, corpus: str, seed: int) -> Path:
    return out / corpus / f"seed{seed}"


def model_names(a: argparse.Namespace, run: Path) -> dict[str, str]:
    """base / sft / dpo -> the name eval gives each (as passed to --models)."""
    return {"base": a.model, "sft": str(run / "sft"), "dpo": str(run / "dpo")}


def run_one(corpus: str, seed: int, a: argparse.Namespace, env: dict | None) -> None:
    """The user path on one corpus and seed; each stage skipped when its output is there."""
    run = run_dir(a.out, corpus, seed)
    inputs, data, timings_path = run / "inputs", run / "data", run / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    extra = {key: getattr(a, key) for key in ("collect", "sft", "dpo", "eval")}
    if not (inputs / "questions.jsonl").exists():
        print(f"[harness] {corpus} seed {seed}: inputs -> {inputs}", file=sys.stderr, flush=True)
        if not a.dry_run:
            write_inputs(corpus, seed, a, inputs)
    names = model_names(a, run)
    stages = [  # (name, command, output dir, done when this exists)
        ("collect", ["collect", "rag", "--corpus", str(inputs / "corpus.jsonl"), "--questions",
                     str(inputs / "questions.jsonl"), "--output-dir", str(data), "--seed", str(seed)],
         data, data / "card.json"),
        ("sft", ["sft", "--model", a.model, "--data", str(data / "train.jsonl"), "--output-dir", names["sft"]],
         run / "sft", run / "sft" / "run.json"),
        ("dpo", ["dpo", "--model", names["sft"], "--output-dir", names["dpo"]], run / "dpo", run / "dpo" / "run.json"),
        ("eval", ["eval", "--models", *names.values(), "--data", str(data / "test.jsonl"), "--output-dir",
                  str(run / "eval")], run / "eval", run / "eval" / "eval.json"),
    ]
    for name, command, out_dir, done in stages:
        flags = shlex.split(extra[name])  # eval: its flags as they are (no settings.yaml)
        argv, config = ([*command, *flags], None) if name == "eval" else prefopt_command(command, flags, out_dir)
        if not a.dry_run:
            timings_path.parent.mkdir(parents=True, exist_ok=True)
        stage(f"{corpus} seed {seed} {name}", argv, done, timings, timings_path, env, config, a.dry_run,
              tag="harness")


# ---- the report ----------------------------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[dict]:
    from prefopt.data import read_jsonl as read

    return list(read(path)) if path.exists() else []


def share(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def model_scores(records: list[dict], test: dict[str, dict], meta: dict[str, dict]) -> dict:
    """One model's figures from its generations.jsonl records (eval's own scoring: `correct`, `final_answer`,
    `quotes`, `quotes_in_oracle`, `predicted_decision`), the test rows by id and the question meta by qid."""
    from prefopt.metrics import answer_correct

    kinds: dict[str, list[dict]] = {"unseen": [], "seen": []}
    twin_shown = twin_errors = 0
    for x in records:
        row_meta = test[x["id"]]["meta"]
        m = meta.get(row_meta.get("qid"))
        if m is None:
            continue
        kinds["unseen" if m["unseen"] else "seen"].append(x)
        if m["twin_value"] is not None and m["twin_doc_id"] in row_meta["doc_ids"]:
            twin_shown += 1
            twin_errors += not x["correct"] and answer_correct(x["final_answer"], m["twin_value"])
    res = {"n": len(records), "accuracy": share(sum(x["correct"] for x in records), len(records)),
           "quote_precision": share(sum(x["quotes_in_oracle"] for x in records), sum(x["quotes"] for x in records))}
    if meta:
        for kind, xs in kinds.items():
            res[f"{kind}_accuracy"], res[f"n_{kind}"] = share(sum(x["correct"] for x in xs), len(xs)), len(xs)
        res["twin_errors"], res["twin_shown"] = twin_errors, twin_shown
    decided = [x for x in records if x.get("decision") is not None]
    if decided:
        res["yesno_accuracy"] = share(sum(x["predicted_decision"] == x["decision"] for x in decided), len(decided))
    return res


def run_scores(run: Path, names: dict[str, str]) -> dict | None:
    """Per model (base, sft, dpo) the figures of one finished run; None while its eval is missing. PubMedQA-like
    data also gets `majority`: the accuracy of always answering "yes"."""
    from prefopt.metrics import gold_decision

    generations = run / "eval" / "generations.jsonl"
    if not generations.exists():
        return None
    test = {row["id"]: row for row in read_jsonl(run / "data" / "test.jsonl")}
    meta = {m["qid"]: m for m in read_jsonl(run / "inputs" / "question_meta.jsonl")}
    records = read_jsonl(generations)
    out = {key: model_scores([x for x in records if x["model"] == name], test, meta) for key, name in names.items()}
    decisions = [gold_decision(row["meta"]) for row in test.values()]
    if any(d is not None for d in decisions):
        out["majority"] = {"yesno_accuracy": share(decisions.count("yes"), sum(d is not None for d in decisions))}
    return out


def spread(values: list) -> dict | None:
    """Mean, min, max and sample standard deviation of the values that are there (None where none are)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": round(statistics.fmean(vals), 4), "min": min(vals), "max": max(vals),
            "std": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0, "n": len(vals)}


def headline(scores: dict) -> float | None:
    """What a default is chosen by, of one model in one run: unseen-type accuracy, else yes/no/maybe accuracy."""
    return scores.get("unseen_accuracy", scores.get("yesno_accuracy"))


def summarize(runs: dict[str, dict[int, dict]]) -> dict:
    """runs: corpus -> seed -> run_scores(). Per corpus and model, every figure's spread over the seeds; and
    `overall`: per model the spread of `headline` over every corpus and seed."""
    summary: dict = {}
    for corpus, seeds in runs.items():
        for key in [*MODELS, "majority"]:
            per_seed = [s[key] for s in seeds.values() if key in s]
            figures = sorted({f for s in per_seed for f in s})
            if per_seed:
                summary.setdefault(corpus, {})[key] = {f: spread([s.get(f) for s in per_seed]) for f in figures}
    overall = {key: spread([headline(s[key]) for seeds in runs.values() for s in seeds.values() if key in s])
               for key in MODELS}
    return {"corpora": summary, "overall": overall}


FORMATS = {"percent": lambda v: f"{100 * v:.1f}", "share": lambda v: f"{v:.2f}", "count": lambda v: f"{v:.3g}"}


def cell(s: dict | None, kind: str = "percent") -> str:
    """`mean (min–max)` of a spread; the mean alone for one seed."""
    if s is None:
        return "-"
    f = FORMATS[kind]
    return f"{f(s['mean'])} ({f(s['min'])}–{f(s['max'])})" if s["n"] > 1 else f(s["mean"])


def markdown(runs: dict, summary: dict) -> str:
    """One line per corpus and model: mean (min–max) over its seeds."""
    lines = [("| corpus | model | seeds | unseen types, acc % | seen types, acc % | yes/no/maybe acc % | "
              "quote precision | twin errors / twin shown |"), "|" + "---|" * 8]
    for corpus, models in summary["corpora"].items():
        seeds = ",".join(str(s) for s in sorted(runs[corpus]))
        for key, figs in models.items():
            twin = f"{cell(figs.get('twin_errors'), 'count')} / {cell(figs.get('twin_shown'), 'count')}" \
                if figs.get("twin_errors") else "-"
            name = "always \"yes\"" if key == "majority" else key
            lines.append(f"| {corpus} | {name} | {seeds} | {cell(figs.get('unseen_accuracy'))} | "
                         f"{cell(figs.get('seen_accuracy'))} | {cell(figs.get('yesno_accuracy'))} | "
                         f"{cell(figs.get('quote_precision'), 'share')} | {twin} |")
    lines.append("")
    lines.append("overall (unseen-type accuracy, PubMedQA's yes/no/maybe accuracy; mean over every corpus and seed): "
                 + ", ".join(f"{k} {cell(v)}" for k, v in summary["overall"].items() if v))
    return "\n".join(lines)


def report(a: argparse.Namespace) -> dict:
    runs: dict[str, dict[int, dict]] = {}
    for corpus in a.corpora:
        for seed in a.seeds:
            run = run_dir(a.out, corpus, seed)
            if (scores := run_scores(run, model_names(a, run))) is not None:
                runs.setdefault(corpus, {})[seed] = scores
    summary = summarize(runs)
    result = {"settings": settings(a), "runs": runs, **summary}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "harness.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(runs, summary))
    return result


# ---- the command line ----------------------------------------------------------------------------------------

def settings(a: argparse.Namespace) -> dict:
    """What makes the runs of one --out comparable (the corpora and seeds may grow)."""
    return {"model": a.model, "collect": a.collect, "sft": a.sft, "dpo": a.dpo, "eval": a.eval,
            "entities": a.entities, "train_questions": a.train_questions, "test_questions": a.test_questions}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/harness"))
    ap.add_argument("--corpora", nargs="+", choices=CORPORA, default=list(CORPORA))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--model", default="smollm2-135m", help="The base model (a Hub id, path or smollm2-135m).")
    for stage_name in ("collect", "sft", "dpo", "eval"):
        ap.add_argument(f"--{stage_name}", default="", help=f"Extra `prefopt {stage_name}` flags (default: none).")
    ap.add_argument("--entities", type=int, default=260, help="Documents of an invented corpus (twin pairs: half).")
    ap.add_argument("--train-questions", type=int, default=256, help="Questions of train documents (collect sets "
                    "its --dpo-share of them, 0.375, apart for DPO).")
    ap.add_argument("--test-questions", type=int, default=50, help="Held-out questions of each kind (unseen, seen).")
    ap.add_argument("--dry-run", action="store_true", help="Print the commands of the stages still to run.")
    ap.add_argument("--report-only", action="store_true", help="Run nothing: report the runs that are done.")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    flags = a.out / "flags.json"
    if flags.exists() and json.loads(flags.read_text()) != settings(a):
        sys.exit(f"{a.out} holds runs made with {flags.read_text().strip()}: use another --out")
    if a.report_only:
        report(a)
        return 0
    if not a.dry_run:
        a.out.mkdir(parents=True, exist_ok=True)
        flags.write_text(json.dumps(settings(a), indent=2) + "\n")
    env, failed = jemalloc_env(True), []
    for corpus in a.corpora:
        for seed in a.seeds:
            try:
                run_one(corpus, seed, a, env)
            except subprocess.CalledProcessError as e:  # the other runs go on; this one resumes on the next call
                print(f"[harness] {corpus} seed {seed} failed: {shlex.join(map(str, e.cmd))}", file=sys.stderr)
                failed.append(f"{corpus} seed {seed}")
    if not a.dry_run:
        report(a)
    if failed:
        print(f"[harness] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
