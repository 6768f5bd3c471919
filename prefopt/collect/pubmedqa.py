"""PubMedQA (``ori_pqal.json`` format) -> a corpus and questions for `prefopt collect rag`.

Each abstract is one document: its ``CONTEXTS`` paragraphs followed by its conclusion (``LONG_ANSWER``),
i.e. the whole abstract, id = the PubMed id. Each question's gold answer is the conclusion, which the
extractive generator then quotes verbatim from the oracle; ``final_decision`` (yes/no/maybe) is also the
question's ``label``, so chosen answers end with ``<ANSWER>: yes`` (or no, maybe) after quoting the conclusion. Usage::

    python -m prefopt.collect.pubmedqa ../shared/data/pubmedqa_pqal_dev.json data/pubmedqa
    prefopt collect rag --corpus data/pubmedqa/corpus.jsonl --questions data/pubmedqa/questions.jsonl \\
        --output-dir data/pubmedqa/rag --retriever bm25 --generator extractive
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefopt.data import write_rows
from prefopt.errors import PrefoptError


def convert(path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if not path.is_file():
        raise PrefoptError(f"{path}: no such file")
    data = json.loads(path.read_text(encoding="utf-8"))
    docs, questions = [], []
    for pmid, item in data.items():
        conclusion = " ".join(item["LONG_ANSWER"].split())
        text = " ".join(" ".join(c.split()) for c in item["CONTEXTS"])
        docs.append({"id": str(pmid), "title": f"PMID {pmid}", "text": f"{text} {conclusion}".strip(),
                     "year": item.get("YEAR")})
        questions.append({"question": item["QUESTION"], "answer": conclusion, "doc_id": str(pmid),
                          "final_decision": item.get("final_decision"), "label": item.get("final_decision")})
    out_dir = Path(out_dir)
    corpus, qs = out_dir / "corpus.jsonl", out_dir / "questions.jsonl"
    write_rows(corpus, docs)
    write_rows(qs, questions)
    return corpus, qs


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m prefopt.collect.pubmedqa PUBMEDQA_JSON OUT_DIR")
    c, q = convert(sys.argv[1], sys.argv[2])
    print(f"wrote {c} and {q}")
