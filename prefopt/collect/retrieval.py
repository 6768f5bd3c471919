"""Distractor mining: rank a split's documents for each question (BM25 hard negatives, or random)."""

from __future__ import annotations

import random

RETRIEVERS = ("bm25", "random")


def rank(kind: str, docs: list[dict], queries: list[str], depth: int, seed: int = 0) -> list[list[int]]:
    """For each query, up to `depth` document indices, best first."""
    depth = min(depth, len(docs))
    if kind == "random":
        rng = random.Random(seed)
        return [rng.sample(range(len(docs)), depth) for _ in queries]
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([d["text"] for d in docs], stopwords="en", show_progress=False),
                    show_progress=False)
    results, _ = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False),
                                    k=depth, show_progress=False)
    return [list(map(int, row)) for row in results]
