"""LLM clients for the collector: an OpenAI-compatible HTTP client and a local transformers model, behind one
response cache on disk.

- ``OpenAIClient`` speaks ``POST {base_url}/chat/completions`` (vLLM, TGI, llama.cpp, Ollama, OpenAI) with
  the standard library (``urllib``); requests run on ``concurrency`` threads. Transient failures (HTTP
  408/409/429/5xx, connection errors, timeouts) are retried ``retries`` times with exponential backoff
  (``backoff`` seconds, doubled each time, with jitter; a ``Retry-After`` header is honoured). The API key
  is read from the environment variable named by ``api_key_env`` and only ever put in the
  ``Authorization`` header: it is never printed, logged or stored.
- ``LocalClient`` generates with a transformers model (``model``, default the bundled ``smollm2-135m``),
  in batches of ``concurrency`` prompts with left padding.
- ``Cache``: a sqlite file (``llm_cache.sqlite`` in the output dir unless ``cache`` says otherwise) keyed
  by sha256 of model + messages + generation parameters. Every answer is committed as soon as it arrives,
  so an interrupted or repeated run never pays twice for the same request.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from prefopt.errors import PrefoptError

TRANSIENT = {408, 409, 429, 500, 502, 503, 504}


class RequestError(Exception):
    """A request the server refused for good (4xx other than the transient ones)."""


class Cache:
    def __init__(self, path: str | os.PathLike):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(model: str, messages: list[dict], params: dict) -> str:
        blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
            return row[0]

    def put(self, key: str, value: str) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self.db.close()


class Client:
    """complete(list of message lists) -> list of completions (str, or None for a refused request), cached."""

    model = ""

    def __init__(self, cache: Cache, temperature: float, max_new_tokens: int, concurrency: int):
        self.cache, self.concurrency = cache, max(1, concurrency)
        self.params = {"temperature": temperature, "max_tokens": max_new_tokens}
        self.requests = 0  # requests actually sent (cache misses, retries included)
        self.errors: dict[int, str] = {}  # index in the last complete() call -> why it was refused

    def complete(self, batch: list[list[dict]]) -> list[str | None]:
        keys = [Cache.key(self.model, m, self.params) for m in batch]
        out: list[str | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        self.errors = {}
        if todo:
            for i, text in zip(todo, self._generate([batch[i] for i in todo])):
                if isinstance(text, RequestError):
                    self.errors[i] = str(text)
                    continue
                self.cache.put(keys[i], text)
                out[i] = text
        return out

    def _generate(self, batch: list[list[dict]]) -> list:
        raise NotImplementedError


class OpenAIClient(Client):
    def __init__(self, base_url: str, model: str, api_key_env: str, cache: Cache, temperature: float = 0.0,
                 max_new_tokens: int = 512, concurrency: int = 8, retries: int = 5, backoff: float = 1.0,
                 timeout: float = 120.0):
        super().__init__(cache, temperature, max_new_tokens, concurrency)
        if not base_url:
            raise PrefoptError("--generator openai needs base_url in the --config file (e.g. base_url: http://localhost:8000/v1)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.retries, self.backoff, self.timeout = model, retries, backoff, timeout
        self._key = os.environ.get(api_key_env) if api_key_env else None
        self._lock = threading.Lock()

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def _one(self, messages: list[dict]):
        body = json.dumps({"model": self.model, "messages": messages, **self.params}).encode()
        last = ""
        for attempt in range(self.retries + 1):
            wait = self.backoff * (2 ** attempt) * (0.5 + random.random() / 2)
            with self._lock:
                self.requests += 1
            try:
                req = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                return data["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code not in TRANSIENT:
                    return RequestError(f"generator request refused ({last})")
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = min(float(retry_after), 60.0)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = type(getattr(e, "reason", e)).__name__
            except (ValueError, KeyError, IndexError, TypeError):
                return RequestError("generator response not in the chat completions format")
            if attempt < self.retries:
                time.sleep(wait)
        raise PrefoptError(f"{self.url}: still failing after {self.retries} retries ({last}); "
                           "rerun the same command to resume")

    def _generate(self, batch):
        if self.concurrency == 1 or len(batch) == 1:
            return [self._one(m) for m in batch]
        with ThreadPoolExecutor(min(self.concurrency, len(batch))) as pool:
            return list(pool.map(self._one, batch))


class LocalClient(Client):
    def __init__(self, model: str, cache: Cache, temperature: float = 0.0, max_new_tokens: int = 512,
                 concurrency: int = 4, seed: int = 0):
        super().__init__(cache, temperature, max_new_tokens, concurrency)
        self.model, self.seed = model, seed
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            from prefopt.models import load_model, load_tokenizer, resolve, to_device

            spec = resolve(self.model)
            tok = load_tokenizer(spec)
            tok.padding_side = "left"
            self._loaded = (tok, to_device(load_model(spec)).eval())
        return self._loaded

    def _generate(self, batch):
        import torch

        tok, model = self._load()
        out = []
        for start in range(0, len(batch), self.concurrency):
            part = batch[start:start + self.concurrency]
            texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in part]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            sample = self.params["temperature"] > 0
            kwargs = {"do_sample": True, "temperature": self.params["temperature"]} if sample else {"do_sample": False}
            torch.manual_seed(self.seed)
            with torch.no_grad():
                ids = model.generate(**enc, max_new_tokens=self.params["max_tokens"], pad_token_id=tok.pad_token_id,
                                     **kwargs)
            self.requests += len(part)
            new = ids[:, enc["input_ids"].shape[1]:]
            out += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
        return out


def make_client(cfg, cache: Cache) -> Client:
    if cfg.generator == "openai":
        return OpenAIClient(cfg.base_url, cfg.model, cfg.api_key_env, cache, cfg.temperature, cfg.max_new_tokens,
                            cfg.concurrency, cfg.retries, cfg.backoff)
    return LocalClient(cfg.model, cache, cfg.temperature, cfg.max_new_tokens, cfg.concurrency, cfg.seed)
