"""Extractive collector throughput on PubMedQA: prints one JSON line.

    python benchmarks/collect_throughput.py [--data ../shared/data/pubmedqa_pqal_dev.json] [--repeat 3]

Measures, best of --repeat runs on one process:
- bm25_index_s: tokenizing and indexing the 500 abstracts with bm25s;
- bm25_retrieve_s: ranking 3K+4 = 16 candidates for every question;
- triples_per_s: extractive triples built and verified per second, given the ranking (build_row + verify);
- end_to_end_triples_per_s: kept triples per second of the whole `collect` step (split, dedup, BM25 index
  and retrieval for both splits, generation, verification), without file writing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prefopt.collect import rag, verify  # noqa: E402
from prefopt.collect.corpus import load_corpus  # noqa: E402
from prefopt.collect.pubmedqa import convert  # noqa: E402
from prefopt.collect.retrieval import rank  # noqa: E402
from prefopt.templates import Templates  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "pubmedqa_pqal_dev.json"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    corpus, qpath = convert(args.data, tmp)
    cfg = rag.RagConfig(corpus=str(corpus), questions=str(qpath), output_dir=str(tmp / "out"), test_size=0.0,
                        retriever="bm25")
    docs = load_corpus(cfg.corpus)
    questions = rag._load(cfg.questions, ("question", "answer", "doc_id"))
    by_id = {d["id"]: d for d in docs}
    counter, tpl = verify.TokenCounter(), Templates()
    import bm25s

    best: dict[str, float] = {}
    kept = 0
    for _ in range(args.repeat):
        t = time.perf_counter()
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize([d["text"] for d in docs], stopwords="en", show_progress=False), show_progress=False)
        index_s = time.perf_counter() - t
        t = time.perf_counter()
        ranked = rank("bm25", docs, [q["question"] for q in questions], 3 * cfg.distractors + 4)
        retrieve_s = time.perf_counter() - t - index_s  # rank() indexes again; count only its retrieval
        t = time.perf_counter()
        kept, norm = 0, {}
        for q, idx in zip(questions, ranked):
            oracle = by_id[q["doc_id"]]
            row, reason = rag.build_row(q, oracle, [docs[i] for i in idx], cfg, tpl, False, norm)
            if row is not None and not verify.check_rag(row, oracle["text"], by_id[row["meta"]["rejected_source_id"]]["text"],
                                                        q["answer"], counter, cfg.max_length):
                kept += 1
        gen_s = time.perf_counter() - t
        t = time.perf_counter()
        out, *_ = rag.collect(rag.RagConfig(corpus=str(corpus), questions=str(qpath), output_dir=str(tmp / "o"), retriever="bm25"), docs, questions, counter)
        e2e_s = time.perf_counter() - t
        n_e2e = sum(len(v) for v in out.values())
        for key, v in (("bm25_index_s", index_s), ("bm25_retrieve_s", max(retrieve_s, 0.0)), ("gen_s", gen_s), ("e2e_s", e2e_s)):
            best[key] = min(best.get(key, v), v)
    print(json.dumps({
        "data": Path(args.data).name, "questions": len(questions), "documents": len(docs), "kept": kept,
        "triples_per_s": round(kept / best["gen_s"], 1), "bm25_index_s": round(best["bm25_index_s"], 4),
        "bm25_retrieve_s": round(best["bm25_retrieve_s"], 4), "end_to_end_kept": n_e2e,
        "end_to_end_triples_per_s": round(n_e2e / best["e2e_s"], 1), "cpus": os.cpu_count(),
        "python": platform.python_version(), "repeat": args.repeat,
    }))


if __name__ == "__main__":
    main()
