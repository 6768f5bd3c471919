"""Corpus input: a JSONL file (`id`, `text`, optional `title`, `group`) or a folder of .txt / .md / .html /
.pdf files, optionally chunked with overlap.

A file in a folder becomes a document whose id is its path relative to the folder (``notes/a.md``).
HTML is reduced to its text with the standard library's parser (scripts and styles dropped); PDF needs the
optional ``pypdf`` package (``pip install 'prefopt[pdf]'``). With ``--chunk-size N`` every document is cut
into windows of N words (or N tokens of ``--tokenizer``) overlapping by ``chunk_overlap``; chunk ``n`` of
document ``d`` has the stable id ``d#c{n}`` and the group ``d``, so that the train/test split keeps a
document's chunks together.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

from prefopt.data import load_rows
from prefopt.errors import PrefoptError

SUFFIXES = (".txt", ".md", ".html", ".htm", ".pdf")
CHUNK_MARK = "#c"  # chunk n of document d: d#c{n}
_TOKEN = re.compile(r"\S+")


class _Text(HTMLParser):
    SKIP = {"script", "style", "head", "noscript"}
    BLOCK = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        self._in_title = tag == "title"
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.skip:
            self.skip -= 1
        self._in_title = False
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if not self.skip:
            self.parts.append(data)


def html_text(html: str) -> tuple[str, str]:
    """(title, text) of an HTML page: tags, scripts and styles removed, whitespace tidied."""
    p = _Text()
    p.feed(html)
    p.close()
    lines = [" ".join(line.split()) for line in "".join(p.parts).splitlines()]
    return " ".join(p.title.split()), "\n".join(line for line in lines if line)


def pdf_text(path: Path) -> str:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise PrefoptError(f"{path}: reading PDF needs pypdf (pip install 'prefopt[pdf]')") from None
    return "\n".join((page.extract_text() or "") for page in PdfReader(str(path)).pages)


def read_text(path: Path) -> str:
    """A text file as UTF-8; bytes that are not UTF-8 become U+FFFD, with a warning naming the file."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        text = raw.decode("utf-8", errors="replace")
        print(f"prefopt: warning: {path}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
              f"{text.count(chr(0xFFFD))} bad characters read as U+FFFD (re-encode it, e.g. iconv -f latin1 -t utf-8)",
              file=sys.stderr, flush=True)
        return text


def read_folder(folder: Path) -> list[dict]:
    docs = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES):
        doc_id, title = path.relative_to(folder).as_posix(), path.stem
        if path.suffix.lower() == ".pdf":
            text = pdf_text(path)
        else:
            text = read_text(path)
            if path.suffix.lower() in (".html", ".htm"):
                html_title, text = html_text(text)
                title = html_title or title
        if text.strip():
            docs.append({"id": doc_id, "title": title, "text": text.strip()})
    if not docs:
        raise PrefoptError(f"{folder}: no non-empty {', '.join(SUFFIXES)} files")
    return docs


def chunk_parent(doc_id: str) -> str | None:
    """The id of the document that a chunk id (``d#c{n}``) was cut from; None for an id that names no chunk."""
    return doc_id.rsplit(CHUNK_MARK, 1)[0] if CHUNK_MARK in doc_id else None


def chunk(doc: dict, size: int, overlap: int, tokenizer=None) -> list[dict]:
    """Windows of `size` words (or tokenizer tokens) with `overlap`; ids `{id}#c{n}`, group = the doc's."""
    text = doc["text"]
    if tokenizer is None:
        spans = [(m.start(), m.end()) for m in _TOKEN.finditer(text)]
    else:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = [tuple(s) for s in enc["offset_mapping"]]
    if len(spans) <= size:
        return [{**doc, "id": f"{doc['id']}{CHUNK_MARK}0", "group": doc.get("group", doc["id"])}]
    out, step, n = [], size - overlap, 0
    for start in range(0, len(spans), step):
        window = spans[start:start + size]
        out.append({**doc, "id": f"{doc['id']}{CHUNK_MARK}{n}", "group": doc.get("group", doc["id"]),
                    "text": text[window[0][0]:window[-1][1]].strip()})
        n += 1
        if start + size >= len(spans):
            break
    return out


def load_corpus(path: str, chunk_size: int = 0, chunk_overlap: int = 0, tokenizer=None,
                strict: bool = False) -> list[dict]:
    """The corpus documents (or chunks), each with `id`, `text` and optional `title`, `group`. A JSONL corpus is
    checked as `prefopt validate --format corpus` checks it: a bad row is left out with its reason counted."""
    p = Path(path)
    if p.is_dir():
        docs = read_folder(p)
    else:
        docs = [{**d, "id": str(d["id"])} for d in load_rows(p, strict=strict, kind="corpus")]
    if chunk_size:
        if not 0 <= chunk_overlap < chunk_size:
            raise PrefoptError("chunk_overlap must be >= 0 and smaller than --chunk-size")
        docs = [c for d in docs for c in chunk(d, chunk_size, chunk_overlap, tokenizer)]
    return docs
