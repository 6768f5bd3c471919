"""`prefopt push` against a local stand-in for the Hub (threading http.server on 127.0.0.1): what arrives,
the model and dataset cards, the combined adapter of a DPO run, retries, one-line errors, and no token leak."""

import base64
import json
import logging
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from prefopt.cli import app
from test_eval import fake_dpo_run, fake_full_dpo_run

TOKEN = "hf_prefoptFAKEtoken0123456789abcdef"


class FakeHub:
    """Answers the endpoints huggingface_hub 2.4 calls for create_repo / create_branch / create_commit:
    POST /api/repos/create, POST /api/{type}s/{repo}/branch/{rev}, POST /api/validate-yaml,
    POST /api/{type}s/{repo}/preupload/{rev} (every file 'regular', so no LFS/xet upload) and
    POST /api/{type}s/{repo}/commit/{rev} (an ndjson body with the files base64-encoded)."""

    def __init__(self):
        self.requests, self.repos, self.commits, self.auth = [], [], [], set()
        self.status = None  # answer every request with this status (401, 403, ...)
        self.fail_commits = 0  # answer this many commits with 503 first
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                hub.requests.append(("GET", self.path))
                self._send(hub.status or 404, {"error": "not served by the fake hub"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                hub.requests.append(("POST", path))
                hub.auth.add(self.headers.get("Authorization"))
                if hub.status:
                    return self._send(hub.status, {"error": "Invalid credentials in Authorization header"})
                if path == "/api/repos/create":
                    req = json.loads(body)
                    hub.repos.append(req)
                    prefix = "datasets/" if req.get("type") == "dataset" else ""
                    return self._send(200, {"url": f"{hub.url}/{prefix}{req['organization']}/{req['name']}"})
                if path == "/api/validate-yaml":
                    yaml.safe_load(json.loads(body)["content"].split("---")[1])  # the card's front matter parses
                    return self._send(200, {"errors": [], "warnings": []})
                parts = path.split("/")  # ['', 'api', 'models', org, name, action, revision]
                if len(parts) == 7 and parts[5] == "branch":
                    return self._send(200, {})
                if len(parts) == 7 and parts[5] == "preupload":
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False, "oid": None} for f in files]})
                if len(parts) == 7 and parts[5] == "commit":
                    if hub.fail_commits:
                        hub.fail_commits -= 1
                        return self._send(503, {"error": "try again"})
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    files = {v["value"]["path"]: base64.b64decode(v["value"]["content"])
                             for v in lines if v["key"] == "file"}
                    hub.commits.append({"type": parts[2], "repo": f"{parts[3]}/{parts[4]}", "revision": parts[6],
                                        "header": lines[0]["value"], "files": files})
                    return self._send(200, {"commitUrl": f"{hub.url}/{parts[3]}/{parts[4]}/commit/{'a' * 40}",
                                            "commitOid": "a" * 40, "pullRequestUrl": None})
                self._send(404, {"error": f"unknown endpoint {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no cached login or token file of the machine
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr("prefopt.push.RETRY_WAIT", 0.0)
    yield server
    server.server.shutdown()
    server.server.server_close()


def push(*args):
    return CliRunner().invoke(app, ["push", *args])


def _no_token_anywhere(*texts_and_dirs):
    for item in texts_and_dirs:
        if isinstance(item, Path):
            for p in item.rglob("*"):
                if p.is_file():
                    assert TOKEN.encode() not in p.read_bytes(), p
        elif isinstance(item, bytes):
            assert TOKEN.encode() not in item
        else:
            assert TOKEN not in item


def test_push_sft_adapter_card_and_dataset(hub, sft_run, rag_data, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    run = tmp_path / "sft"
    shutil.copytree(sft_run, run)
    (run / "eval.json").write_text(json.dumps({"data": "test.jsonl", "results": {
        "base": {"pref_accuracy": 0.25, "answer_accuracy": 0.5, "n_pairs": 4, "n_questions": 4},
        str(run): {"pref_accuracy": 0.75, "answer_accuracy": 0.5, "exact_match": 0.25, "n_pairs": 4, "n_questions": 4}}}))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    result = push(str(run), "--repo-id", "me/tiny-sft", "--private", "--revision", "dev", "--commit-message",
                  "first push", "--dataset", str(rag_data), "--base-model", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # the run dir is left as it was

    assert [r["name"] for r in hub.repos] == ["tiny-sft", "tiny-sft-data"]
    assert hub.repos[0]["visibility"] == "private" and hub.repos[1]["type"] == "dataset"
    model, data = hub.commits
    assert (model["repo"], model["type"], model["revision"]) == ("me/tiny-sft", "models", "dev")
    assert model["header"]["summary"] == "first push"
    files = model["files"]
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
            "config.yaml", "run.json", "eval.json", "README.md"} <= set(files)
    assert not any(name.startswith(("model", "pytorch_model")) for name in files)  # the adapter, not full weights
    assert files["adapter_model.safetensors"] == (run / "adapter_model.safetensors").read_bytes()
    adapter_cfg = json.loads(files["adapter_config.json"])
    assert adapter_cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"

    card = files["README.md"].decode()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["library_name"] == "peft"
    assert {"prefopt", "trl", "sft"} <= set(front["tags"]) and front["datasets"] == ["me/tiny-sft-data"]
    assert "| lora_r | 16 |" in card and "| lora_alpha | 32 |" in card
    assert "## Data" in card and "distractors per prompt: 3" in card  # from card.json next to train.jsonl
    assert "## Evaluation" in card and "| 0.750 |" in card  # eval.json of the run dir

    assert data["repo"] == "me/tiny-sft-data" and data["type"] == "datasets"
    assert {"train.jsonl", "dpo.jsonl", "test.jsonl", "card.json", "README.md"} <= set(data["files"])
    assert data["files"]["train.jsonl"] == (rag_data / "train.jsonl").read_bytes()
    dcard = yaml.safe_load(data["files"]["README.md"].decode().split("---")[1])
    assert {"split": "train", "path": "train.jsonl"} in dcard["configs"][0]["data_files"]
    assert {"split": "dpo", "path": "dpo.jsonl"} in dcard["configs"][0]["data_files"]

    # the token was used (Authorization header) and is nowhere else
    assert hub.auth == {f"Bearer {TOKEN}"}
    _no_token_anywhere(run, rag_data, result.output, caplog.text,
                       *[b for c in hub.commits for b in c["files"].values()])


def test_push_dpo_run_is_one_combined_adapter_on_the_base(hub, sft_run, tiny_model, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from prefopt.models import load_model, resolve

    dpo = fake_dpo_run(sft_run, tmp_path / "dpo")
    result = push(str(dpo), "--repo-id", "me/tiny-dpo")
    assert result.exit_code == 0, result.output + repr(result.exception)
    files = hub.commits[0]["files"]
    card = files["README.md"].decode()
    front = yaml.safe_load(card.split("---")[1])
    assert {"prefopt", "trl", "dpo", "ipo"} <= set(front["tags"]) and "combined" in card and "| β | 0.5 |" in card
    assert "base_model" not in front  # the tiny base is only a local path: no Hub id to name

    # what a Hub user loads: base + the pushed adapter == base + SFT + DPO as prefopt loads it
    pushed = tmp_path / "pushed"
    pushed.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (pushed / name).write_bytes(files[name])
    assert json.loads(files["adapter_config.json"])["r"] == 32  # SFT rank 16 + DPO rank 16
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 30]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        got = PeftModel.from_pretrained(base, str(pushed)).eval()(input_ids=ids).logits
        want = load_model(resolve(str(dpo))).eval()(input_ids=ids).logits
        sft_only = load_model(resolve(str(sft_run))).eval()(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, sft_only, atol=1e-3)


def test_push_merge_uploads_full_weights(hub, sft_run):
    result = push(str(sft_run), "--repo-id", "me/tiny-merged", "--merge")
    assert result.exit_code == 0, result.output + repr(result.exception)
    files = hub.commits[0]["files"]
    assert "model.safetensors" in files and "config.json" in files and "adapter_model.safetensors" not in files
    front = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert front["library_name"] == "transformers"


def test_push_full_weights_run(hub, tiny_model, tmp_path):
    run = fake_full_dpo_run(tiny_model, tmp_path / "full")
    result = push(str(run), "--repo-id", "me/tiny-full")
    assert result.exit_code == 0, result.output + repr(result.exception)
    files = hub.commits[0]["files"]
    assert files["model.safetensors"] == (run / "model.safetensors").read_bytes() and "config.json" in files
    assert "adapter_config.json" not in files and "(full fine-tuning)" in files["README.md"].decode()


def test_push_retries_a_transient_error(hub, sft_run):
    hub.fail_commits = 1
    result = push(str(sft_run), "--repo-id", "me/tiny-retry")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert len(hub.commits) == 1 and "retrying" in result.output


@pytest.mark.parametrize("status,needle", [(401, "401 Unauthorized"), (403, "forbidden (403)"), (404, "not found (404)")])
def test_push_auth_errors_are_one_line_exit_2(hub, sft_run, status, needle, caplog):
    hub.status = status
    result = push(str(sft_run), "--repo-id", "me/tiny")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output
    assert not hub.commits
    _no_token_anywhere(result.output, caplog.text)


def test_push_without_a_token_says_so(monkeypatch, tmp_path, sft_run):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "token"))
    result = push(str(sft_run), "--repo-id", "me/tiny")
    assert result.exit_code == 2 and "no Hugging Face token" in result.output
