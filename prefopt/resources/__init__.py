"""Data shipped inside the package: the quickstart's invented-facts corpus and its questions (``--corpus
quickstart`` in ``prefopt collect rag``)."""

from importlib.resources import files
from pathlib import Path

QUICKSTART = Path(str(files("prefopt.resources"))) / "quickstart"
