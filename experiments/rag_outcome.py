"""Does SFT -> DPO make RAG answers more grounded? prefopt's own commands, end to end, on a real model.

    python experiments/rag_outcome.py --out runs/outcome                        # prefopt's defaults
    python experiments/rag_outcome.py --out runs/outcome --dpo "--loss ipo --beta 0.5"   # one sweep row

Data (`--data synthetic`, the default): an invented-facts corpus (experiments/corpora.py) of a few hundred documents
about entities no model can know, each with a look-alike twin (a one-letter namesake of the same kind, with the
same fact types and other answers). Whole twin pairs go to train or test, and the `--holdout` fact types never
occur in train. Held-out questions show the oracle and 4 dense-retrieved distractors, so the twin is among them.
`--data pubmedqa` uses ../shared/data/pubmedqa_pqal_dev.json instead (the chosen answer quotes the conclusion
and ends with the yes/no/maybe `final_decision`; eval reports the accuracy of that label).

Stages (each one a `prefopt` command, printed before it runs, skipped when its output is already there, so a
sweep over DPO settings trains SFT once; use another --out for other --collect flags; --collect-only stops
after collecting): collect rag -> sft -> eval of base and SFT -> dpo -> eval of DPO (answers only:
`--no-scores`, half the time). As prefopt's defaults do, DPO trains on other questions of the train documents
than SFT (`--dpo-questions`, 96), collected as collect's DPO rows (dpo.jsonl: the oracle always shown, misquoted
and misread rejected answers); the script picks those questions itself (collect's `--dpo-share` 0 and 1), so
SFT's questions and the held-out ones stay the same whatever the DPO data. `--dpo-questions 0` trains DPO on the
SFT data, and `--dpo-collect` collects DPO's questions with other flags, into train.jsonl.

--collect, --dpo-collect, --sft and --dpo take every setting of their prefopt command as a flag, also those that
prefopt takes only from its --config file (config-only, e.g. `--hard-margin 0`, `--template-dir DIR`) or from
that file's `experimental:` block (e.g. `--on-policy-quotes`, `--both-orders`): the stage writes those into
settings.yaml in its output dir and passes `--config` to it (`split_settings` below).

experiments/rag_sweep.py runs many rows at once. The last line printed is one JSON object: per model the answer
accuracy overall, on held-out questions of unseen and of seen fact types, quote precision, distractor rate (answers
quoting a distractor verbatim), the share of answers whose wrong final answer a distractor holds and the oracle
does not (`*_from_distractor`: the twin's value under the asked entity's name, a quote no verbatim check catches),
the share of answers that quote and the accuracy of those (`*_quoting`, `*_quoting_accuracy`), all of it also on
the prompts that show the look-alike twin after the oracle and on those that show it before (`twin_after_*`,
`twin_before_*`: LOG.md, "Which of two look-alikes the model reads"), DPO against SFT
question by question (`dpo_vs_sft`: answers gained and lost, and the exact McNemar p-value of that split), and the
seconds of every stage.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import math
import os
import random
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBMEDQA = ROOT.parent / "shared" / "data" / "pubmedqa_pqal_dev.json"


def slug(args: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "_", args.lower()).strip("_") or "default"


def run_dirs(a: argparse.Namespace) -> tuple[Path, Path, Path]:
    """(SFT run, DPO run, DPO data) of parsed arguments, named by their flags: rows that agree share them."""
    sft_dir, dpo_dir = a.out / f"sft-{slug(a.sft)}", a.out / f"dpo-{slug(a.sft)}-{slug(a.dpo)}"
    dpo_data = a.out / "data"
    if a.dpo_collect is not None or a.dpo_questions:  # its own data dir, named by its flags
        flags = a.collect if a.dpo_collect is None else a.dpo_collect
        phrased = "-phrased" if a.dpo_phrasings else ""
        dpo_data = a.out / f"data-{f'q{a.dpo_questions}-' if a.dpo_questions else ''}{slug(flags)}{phrased}"
        dpo_dir = dpo_dir.with_name(f"{dpo_dir.name}-on-{dpo_data.name}")
    return sft_dir, dpo_dir, dpo_data


def eval_path(out: Path, name: str, suffix: str = "") -> Path:
    """Where `name` (base, or a run dir's name) is evaluated; `suffix` marks a --docs eval."""
    return out / "eval" / f"{name}{suffix}"


def jemalloc_env(use: bool) -> dict | None:
    """The environment of the stages: with jemalloc preloaded when `use` and the library is installed (Debian:
    libjemalloc2), holding on to freed memory. glibc hands the large tensors of every step back to the kernel,
    which zeroes fresh pages for the next one (a quarter of the CPU time of SFT here); the numbers do not change."""
    lib = ctypes.util.find_library("jemalloc") if use else None  # a soname, which the loader finds as it is
    if not lib:
        return None
    preload = " ".join(filter(None, (lib, os.environ.get("LD_PRELOAD"))))
    return {**os.environ, "LD_PRELOAD": preload, "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1,retain:true"}


# The settings of each prefopt command that are not flags: config-only ones are set at the top level of its
# --config YAML file, experimental ones under that file's `experimental:` block.
TRAIN_CONFIG_ONLY = {"lora_dropout", "lora_targets", "logging_steps", "merge", "attn_implementation", "report_to",
                     "strict", "trust_remote_code"}
NOT_FLAGS = {  # command -> (config-only settings, experimental settings)
    "collect": ({"template_dir", "quote_match", "near_dup", "chunk_overlap", "model", "base_url", "api_key_env",
                 "concurrency", "retries", "backoff", "temperature", "max_new_tokens", "cache", "questions_per_chunk"},
                {"dpo_order"}),
    "sft": (TRAIN_CONFIG_ONLY, {"lora_rank_pattern", "both_orders"}),
    "dpo": (TRAIN_CONFIG_ONLY | {"sft_weight", "label_smoothing", "hard_margin", "hard_repeat", "prefix_sharing"},
            {"lora_rank_pattern", "on_policy_quotes", "on_policy_grounded", "on_policy_reversed", "abstain_rows",
             "on_policy_rounds"}),
}
CONFIG_CLASSES = {"collect": ("prefopt.collect.rag", "RagConfig"), "sft": ("prefopt.sft", "SFTConfig"),
                  "dpo": ("prefopt.dpo", "DPOConfig")}


def setting_types(command: str) -> dict[str, type]:
    """The type of every setting of `prefopt <command>` (bool, int, float or str), from its config dataclass."""
    import dataclasses
    import importlib
    import typing

    module, name = CONFIG_CLASSES[command]
    cls = getattr(importlib.import_module(module), name)
    out = {}
    for f, tp in typing.get_type_hints(cls).items():
        args = [t for t in typing.get_args(tp) if t is not type(None)]  # Optional[X] -> X
        out[f] = args[0] if args else tp
    return {f.name: out[f.name] for f in dataclasses.fields(cls)}


def typed(value: str, tp: type, flag: str):
    if tp is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            sys.exit(f"{flag}: {value!r} is not a boolean")
        return value.lower() in ("true", "1", "yes")
    try:
        return tp(value) if tp in (int, float) else value
    except ValueError:
        sys.exit(f"{flag}: {value!r} is not a {tp.__name__}")


def split_settings(command: str, argv: list[str]) -> tuple[list[str], dict]:
    """`argv`, flags of `prefopt <command>` as --collect, --sft and --dpo take them, as (the flags prefopt takes, the
    settings of its --config file: the config-only ones at the top level, the experimental ones under
    `experimental`). A setting that is not a flag is given as `--name VALUE` or `--name=VALUE`, a boolean one as
    `--name` or `--no-name`; a `--config FILE` among the flags is read, and these settings are set over it."""
    config_only, experimental = NOT_FLAGS[command]
    types, flags, settings, i = setting_types(command), [], {}, 0
    while i < len(argv):
        token = argv[i]
        i += 1
        head, eq, value = token.partition("=")
        name = head[2:].replace("-", "_") if head.startswith("--") else ""
        if name == "config":
            if not eq:
                value, i = argv[i], i + 1
            import yaml

            settings = {**(yaml.safe_load(Path(value).read_text()) or {}), **settings}
            continue
        negated = name.startswith("no_") and types.get(name[3:]) is bool and name[3:] in config_only | experimental
        if negated:
            name = name[3:]
        if name not in config_only | experimental:
            flags.append(token)
            continue
        if types[name] is bool:
            v = (not negated) if not eq else typed(value, bool, head)
        else:
            if not eq:
                if i >= len(argv):
                    sys.exit(f"{head} needs a value")
                value, i = argv[i], i + 1
            v = typed(value, types[name], head)
        if name in experimental:
            settings.setdefault("experimental", {})[name] = v
        else:
            settings[name] = v
    return flags, settings


def prefopt_command(command: list[str], argv: list[str], out_dir: Path) -> tuple[list[str], tuple[Path, dict] | None]:
    """The argv of `prefopt <command...> <argv>`, with the settings that are not flags moved to
    `out_dir`/settings.yaml (passed with --config); and that file with its settings (None when there are none), for
    `stage` to write."""
    flags, settings = split_settings(command[0], argv)
    if not settings:
        return [*command, *flags], None
    path = out_dir / "settings.yaml"
    return [*command, "--config", str(path), *flags], (path, settings)


def stage(name: str, argv: list[str], done: Path, timings: dict, path: Path, env: dict | None = None,
          config: tuple[Path, dict] | None = None, dry_run: bool = False, tag: str = "rag_outcome") -> None:
    """Run one prefopt command (in `env`) unless `done` exists, after writing its `config` file (path, settings);
    record its wall time in `timings`, saved to `path`. With `dry_run`, only print the command and the file. The
    lines printed start with `[tag]`."""
    if done.exists():
        print(f"[{tag}] {name}: already done ({done})", file=sys.stderr)
        return
    print(f"[{tag}] {name}: prefopt {shlex.join(argv)}", file=sys.stderr, flush=True)
    if config:
        import yaml

        text = yaml.safe_dump(config[1], sort_keys=False)
        print(f"[{tag}] {name}: {config[0]}:\n" + "".join(f"    {line}\n" for line in text.splitlines()),
              file=sys.stderr, end="", flush=True)
        if not dry_run:
            config[0].parent.mkdir(parents=True, exist_ok=True)
            config[0].write_text(text)
    if dry_run:
        return
    start = time.time()
    subprocess.run([sys.executable, "-m", "prefopt", *argv], check=True, env=env)
    timings[name] = round(time.time() - start, 1)
    path.write_text(json.dumps(timings, indent=2) + "\n")


def synthetic_corpus(a: argparse.Namespace, phrasings: bool) -> tuple[list[dict], list[dict]]:
    """The documents and questions of the invented-facts corpus the arguments name."""
    from corpora import make_corpus, type_names

    return make_corpus(a.entities, a.facts_per_doc, a.seed, twins=True, fact_types=type_names(a.more_fact_types),
                       holdout=tuple(a.holdout), test_share=0.25, phrasings=phrasings)


def synthetic_inputs(out: Path, a: argparse.Namespace) -> None:
    """corpus.jsonl and questions.jsonl: all documents, `--train-questions` questions of train documents and
    `--test-questions` of each kind (unseen / seen fact type) of test documents; with `--dpo-questions N` also
    dpo_questions_N.jsonl, N other questions of train documents (drawn last, so the others stay the same)."""
    from prefopt.synthetic import write_jsonl

    docs, questions = synthetic_corpus(a, a.phrasings)
    split = {d["id"]: d["split"] for d in docs}
    r = random.Random(a.seed)
    train = [q for q in questions if split[q["doc_id"]] == "train"]
    unseen = [q for q in questions if split[q["doc_id"]] == "test" and q["fact_type"] in a.holdout]
    seen = [q for q in questions if split[q["doc_id"]] == "test" and q["fact_type"] not in a.holdout]
    picked = [r.sample(qs, min(n, len(qs))) for qs, n in
              ((train, a.train_questions), (unseen, a.test_questions), (seen, a.test_questions))]
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "corpus.jsonl", docs)
    write_jsonl(out / "questions.jsonl", [q for qs in picked for q in qs])
    if a.dpo_questions:
        rest = [q for q in train if q not in picked[0]]
        write_jsonl(out / f"dpo_questions_{a.dpo_questions}.jsonl", r.sample(rest, min(a.dpo_questions, len(rest))))


def phrased_corpus(out: Path, a: argparse.Namespace) -> Path:
    """corpus_phrased.jsonl: the documents of corpus.jsonl with each fact of a train document stated in one of
    three ways (`--phrasings`); the values, the questions and the held-out documents stay the same."""
    from prefopt.synthetic import write_jsonl

    path = out / "corpus_phrased.jsonl"
    if not path.exists():
        write_jsonl(path, synthetic_corpus(a, phrasings=True)[0])
    return path


def fewer_documents(test: Path, corpus: Path, keep: str, dest: Path) -> Path:
    """`test` with every prompt re-rendered from fewer of its documents, in their order: the oracle alone
    (`keep` = oracle), or the oracle and its look-alike twin, the document of its `group` (twin)."""
    from prefopt.data import read_jsonl
    from prefopt.synthetic import write_jsonl
    from prefopt.templates import Templates

    docs, tpl, rows = {d["id"]: d for d in read_jsonl(corpus)}, Templates(), []
    for row in read_jsonl(test):
        meta = row["meta"]
        group = docs[meta["oracle_id"]].get("group")
        ids = [i for i in meta["doc_ids"] if i == meta["oracle_id"] or
               (keep == "twin" and group is not None and docs[i].get("group") == group)]
        user = tpl.render("rag_prompt.j2", question=meta["question"], docs=[docs[i] for i in ids])
        rows.append({**row, "prompt": [row["prompt"][0], {"role": "user", "content": user}],
                     "meta": {**meta, "doc_ids": ids}})
    write_jsonl(dest, rows)
    return dest


def question_kinds(test_rows: dict, holdout: list[str]) -> dict[str, set[str]]:
    """The ids of the held-out questions of unseen (`holdout`) and of seen fact types; none without a holdout."""
    if not holdout:
        return {}
    unseen = {i for i, row in test_rows.items() if row["meta"].get("fact_type") in holdout}
    return {"unseen": unseen, "seen": set(test_rows) - unseen}


def lookalike_order(test_rows: dict, corpus: Path) -> dict[str, set[str]]:
    """The ids of the held-out questions whose look-alike twin (the other document of the oracle's `group`) the
    prompt shows after the oracle (`twin_after`), and before it (`twin_before`); none without groups."""
    from prefopt.data import read_jsonl

    group = {d["id"]: d.get("group") for d in read_jsonl(corpus)} if corpus.exists() else {}
    order: dict[str, set[str]] = {"twin_after": set(), "twin_before": set()}
    for i, row in test_rows.items():
        ids, oracle = row["meta"]["doc_ids"], row["meta"]["oracle_id"]
        twins = [k for k, d in enumerate(ids) if d != oracle and group.get(d) is not None and
                 group.get(d) == group.get(oracle)]
        if twins and oracle in ids:
            order["twin_after" if twins[0] > ids.index(oracle) else "twin_before"].add(i)
    return {k: ids for k, ids in order.items() if ids}


def breakdown(eval_dir: Path, test_rows: dict, kinds: dict[str, set[str]]) -> tuple[dict, dict[str, bool]]:
    """eval.json's metrics of the one model in `eval_dir`, plus accuracy and quote precision by seen/unseen type;
    and whether each question (by id) was answered right."""
    from prefopt.metrics import answer_correct, answer_from_distractor, gold_answers
    from prefopt.raft import final_answer, split_documents

    metrics = next(iter(json.loads((eval_dir / "eval.json").read_text())["results"].values()))
    keep = ("answer_accuracy", "quote_precision", "distractor_rate", "yesno_accuracy", "pref_accuracy",
            "reward_accuracy", "reward_margin", "n_questions")
    res = {k: metrics[k] for k in keep if metrics.get(k) is not None}
    recs = [json.loads(line) for line in (eval_dir / "generations.jsonl").read_text().splitlines() if line]
    for x in recs:  # rescored with the current metric, so evals saved by older versions stay comparable
        row = test_rows[x["id"]]
        x["final_answer"] = final_answer(x["generated"])
        x["correct"] = any(answer_correct(x["final_answer"], g) for g in gold_answers(row["meta"]))
        x["from_distractor"] = not x["correct"] and answer_from_distractor(x["final_answer"], *split_documents(row))
    res["answer_accuracy"] = round(sum(x["correct"] for x in recs) / len(recs), 4)
    for kind, ids in kinds.items():
        mine = [x for x in recs if x["id"] in ids]
        quotes = sum(x["quotes"] for x in mine)
        res[f"{kind}_accuracy"] = round(sum(x["correct"] for x in mine) / len(mine), 4) if mine else None
        good = sum(x["quotes_in_oracle"] for x in mine)
        res[f"{kind}_quote_precision"] = round(good / quotes, 4) if quotes else None
        res[f"{kind}_from_distractor"] = round(sum(x["from_distractor"] for x in mine) / len(mine), 4) if mine \
            else None
        quoting = [x for x in mine if x["quotes"]]
        res[f"{kind}_quoting"] = round(len(quoting) / len(mine), 4) if mine else None  # share that quotes
        res[f"{kind}_quoting_accuracy"] = round(sum(x["correct"] for x in quoting) / len(quoting), 4) \
            if quoting else None
        res[f"n_{kind}"] = len(mine)
    return res, {x["id"]: x["correct"] for x in recs}


def paired(before: dict[str, bool], after: dict[str, bool], ids: set[str]) -> dict:
    """`after` against `before` on the same questions: answers gained and lost, and the two-sided exact McNemar
    p-value (a binomial test of the gains among the changed answers: how often chance alone changes as many)."""
    gained = sum(after[i] and not before[i] for i in ids)
    lost = sum(before[i] and not after[i] for i in ids)
    n = gained + lost
    p = min(1.0, 2 * sum(math.comb(n, j) for j in range(min(gained, lost) + 1)) / 2 ** n) if n else 1.0
    return {"gained": gained, "lost": lost, "p": round(p, 4)}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/rag-outcome"))
    ap.add_argument("--data", choices=("synthetic", "pubmedqa"), default="synthetic")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--collect", default="--retriever dense --distractors 4", help="Extra `collect rag` flags.")
    ap.add_argument("--dpo-collect", default=None, help="`collect rag` flags of the DPO data when it differs from "
                    "the SFT data (e.g. '--retriever dense --distractors 4 --p 1.0': every row shows the oracle), "
                    "collected into train.jsonl; default: collect's own DPO rows (dpo.jsonl) of the --dpo-questions, "
                    "with the --collect flags.")
    ap.add_argument("--dpo-questions", type=int, default=96, help="Train DPO on this many other questions of train "
                    "documents, ones the SFT model never saw, collected as collect's DPO rows (dpo.jsonl) unless "
                    "--dpo-collect is given (0: DPO trains on the SFT questions).")
    ap.add_argument("--sft", default="", help="Extra `prefopt sft` flags (default: prefopt's defaults).")
    ap.add_argument("--dpo", default="", help="Extra `prefopt dpo` flags (default: prefopt's defaults).")
    ap.add_argument("--eval", default="--no-scores", help="Extra `prefopt eval` flags (default: answers only; "
                    "'' adds the log-prob scoring of chosen vs rejected, at twice the time).")
    ap.add_argument("--entities", type=int, default=260, help="Synthetic documents (twin pairs: half as many).")
    ap.add_argument("--facts-per-doc", type=int, default=2)
    ap.add_argument("--holdout", nargs="+", default=["material", "mascot"], help="Fact types never in train.")
    ap.add_argument("--more-fact-types", action="store_true", help="Documents also state the 8 fact types of "
                    "corpora.MORE_TYPES (16 in all, 14 of them in train): other sentence patterns.")
    ap.add_argument("--phrasings", action="store_true", help="Train documents state each fact in one of 3 ways "
                    "(corpora.PHRASINGS); the held-out documents and all questions stay the same.")
    ap.add_argument("--dpo-phrasings", action="store_true", help="Only DPO's documents are phrased so (SFT's stay "
                    "plain): DPO's prompts show sentence patterns SFT never trained on, as the held-out fact types "
                    "do, so the model's own loose quotes of them can be rejected answers (`--dpo "
                    "--on-policy-quotes`).")
    ap.add_argument("--train-questions", type=int, default=160, help="Questions of train documents for SFT.")
    ap.add_argument("--test-questions", type=int, default=50, help="Held-out questions of each kind (unseen, seen).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-base", action="store_true", help="Do not evaluate the base model (sweeps reuse it).")
    ap.add_argument("--docs", choices=("all", "twin", "oracle"), default="all", help="Documents of the held-out "
                    "prompts in eval: all (the oracle and 4 distractors), the oracle and its twin, or the oracle "
                    "alone: how much of the error is telling look-alikes apart, and how much reading.")
    ap.add_argument("--system-malloc", action="store_true", help="Run the stages with glibc's allocator even "
                    "where jemalloc is installed (by default it is preloaded: the defaults ran in 40.5 instead of 54 "
                    "min on 2 CPU cores).")
    ap.add_argument("--dry-run", action="store_true", help="Print the prefopt commands of the stages still to run, "
                    "and the settings.yaml of each, without running or writing anything.")
    ap.add_argument("--collect-only", action="store_true", help="Stop after collecting (e.g. to carry the data to "
                    "a GPU machine without the embedding model of --retriever dense).")
    return ap


def dpo_rows_path(a: argparse.Namespace, data: Path, dpo_data: Path) -> Path:
    """DPO's data: collect's DPO split (dpo.jsonl) where there is one, else the train split of DPO's data dir. Before
    it is collected (--dry-run), where collect will write it: dpo.jsonl where the --dpo-share is above 0."""
    if (dpo_data / "dpo.jsonl").exists() or (dpo_data / "card.json").exists():
        return dpo_data / ("dpo.jsonl" if (dpo_data / "dpo.jsonl").exists() else "train.jsonl")
    flags = shlex.split(a.collect if a.dpo_collect is None else a.dpo_collect)
    share = flags[flags.index("--dpo-share") + 1] if "--dpo-share" in flags[:-1] else None
    if a.data == "synthetic":  # rag_outcome's own --dpo-share comes first, and a flag of the row wins
        share = share or ("1" if dpo_data != data and a.dpo_collect is None else "0")
    return dpo_data / ("train.jsonl" if share is not None and float(share) == 0 else "dpo.jsonl")


def main() -> None:
    a = parser().parse_args()
    dry = a.dry_run
    if a.data == "pubmedqa":
        a.holdout, a.dpo_questions = [], 0
    out, timings_path = a.out, a.out / "timings.json"
    if not dry:
        out.mkdir(parents=True, exist_ok=True)
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    inputs, data = out / "inputs", out / "data"
    dpo_questions = inputs / f"dpo_questions_{a.dpo_questions}.jsonl"
    if a.dpo_questions and a.data != "synthetic":
        sys.exit("--dpo-questions needs --data synthetic")
    if a.dpo_phrasings and (a.phrasings or not a.dpo_questions):
        sys.exit("--dpo-phrasings needs --dpo-questions (DPO's own questions) and plain SFT documents (no --phrasings)")
    if not dry and (not (inputs / "questions.jsonl").exists() or (a.dpo_questions and not dpo_questions.exists())):
        if a.data == "synthetic":
            synthetic_inputs(inputs, a)
        else:
            from prefopt.collect.pubmedqa import convert

            convert(PUBMEDQA, inputs)
    names = {}  # model key -> its stage names, for the timings
    env = jemalloc_env(not a.system_malloc)
    print(f"[rag_outcome] allocator: {env['LD_PRELOAD'].split()[0] if env else 'glibc'}", file=sys.stderr)

    def step(key: str, name: str, command: list[str], flags: str, out_dir: Path, done: Path) -> None:
        """Stage `name` of model `key`: `prefopt <command> <flags>`, its other settings in out_dir/settings.yaml."""
        names.setdefault(key, []).append(name)
        argv, config = prefopt_command(command, shlex.split(flags), out_dir)
        stage(name, argv, done, timings, timings_path, env, config, dry)

    def collect(flags: str, dest: Path, questions: Path = inputs / "questions.jsonl",
                corpus: Path = inputs / "corpus.jsonl") -> None:
        # the questions are split here, not by collect's --dpo-share draw: SFT's go to train.jsonl, and DPO's to
        # dpo.jsonl (collect's DPO rows) or, collected with their own --dpo-collect flags, to train.jsonl
        # (PubMedQA's collect draws them by --dpo-share)
        own = [] if a.data != "synthetic" else ["--dpo-share", "1" if dest != data and a.dpo_collect is None else "0"]
        step("data", "collect" if dest == data else f"collect {dest.name}",
             ["collect", "rag", "--corpus", str(corpus), "--questions", str(questions), "--output-dir", str(dest),
              "--seed", str(a.seed), *own], flags, dest, dest / "card.json")

    collect(a.collect, data)
    recorded = data / "collect_args.txt"
    if not recorded.exists():
        if not dry:
            recorded.write_text(a.collect + "\n")
    elif recorded.read_text().strip() != a.collect.strip():
        sys.exit(f"{data} was collected with --collect {recorded.read_text().strip()!r}, not {a.collect!r}: "
                 "use another --out")
    sft_dir, dpo_dir, dpo_data = run_dirs(a)
    if dpo_data != data:
        phrased = inputs / "corpus_phrased.jsonl" if dry else phrased_corpus(inputs, a)
        collect(a.collect if a.dpo_collect is None else a.dpo_collect, dpo_data,
                dpo_questions if a.dpo_questions else inputs / "questions.jsonl",
                phrased if a.dpo_phrasings else inputs / "corpus.jsonl")
    if a.collect_only:
        return
    # PubMedQA rows run to 2 505 tokens (prompt + answer), and sft drops the rows longer than its default 1024
    longer = "--max-length 2560 " if a.data == "pubmedqa" else ""  # a --max-length in --sft comes last, and wins
    step("sft", sft_dir.name, ["sft", "--model", a.model, "--data", str(data / "train.jsonl"), "--output-dir",
                               str(sft_dir)], longer + a.sft, sft_dir, sft_dir / "run.json")
    models = {"base": a.model, "sft": sft_dir, "dpo": dpo_dir}
    if a.skip_base:
        del models["base"]
    test, suffix = data / "test.jsonl", "" if a.docs == "all" else f"-docs_{a.docs}"
    if suffix:
        test = out / f"test{suffix}.jsonl" if dry else \
            fewer_documents(test, inputs / "corpus.jsonl", a.docs, out / f"test{suffix}.jsonl")
    eval_dirs = {key: eval_path(out, key if key == "base" else Path(model).name, suffix)
                 for key, model in models.items()}
    for key, model in models.items():  # SFT is evaluated before DPO trains: sweeps (rag_sweep.py) wait for it
        if key == "dpo":
            step("dpo", dpo_dir.name, ["dpo", "--model", str(sft_dir), "--data", str(dpo_rows_path(a, data, dpo_data)),
                                       "--output-dir", str(dpo_dir)], a.dpo, dpo_dir, dpo_dir / "run.json")
        eval_argv = ["eval", "--models", str(model), "--data", str(test), "--output-dir", str(eval_dirs[key]),
                     *shlex.split(a.eval)]
        names.setdefault(key, []).append(f"eval {eval_dirs[key].name}")
        stage(f"eval {eval_dirs[key].name}", eval_argv, eval_dirs[key] / "eval.json", timings, timings_path, env,
              dry_run=dry)
    if dry:
        return
    test_rows = {row["id"]: row for row in map(json.loads, test.read_text().splitlines())}
    result = {"data": a.data, "model": a.model, "collect_args": a.collect, "dpo_collect_args": a.dpo_collect,
              "dpo_questions": a.dpo_questions, "dpo_phrasings": a.dpo_phrasings, "sft_args": a.sft, "dpo_args": a.dpo,
              "holdout": a.holdout, "seed": a.seed, "docs": a.docs, "malloc": "jemalloc" if env else "glibc"}
    correct = {}
    kinds = {**question_kinds(test_rows, a.holdout), **lookalike_order(test_rows, inputs / "corpus.jsonl")}
    for key in models:
        result[key], correct[key] = breakdown(eval_dirs[key], test_rows, kinds)
    result["dpo_vs_sft"] = {kind: paired(correct["sft"], correct["dpo"], ids)
                            for kind, ids in {"all": set(test_rows), **kinds}.items()}
    result["seconds"] = {name: timings.get(name) for stages in names.values() for name in stages}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
