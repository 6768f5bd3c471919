"""Trainer options on the tiny model: reference strategies, full fine-tuning, --merge, chat SFT data, resume
after SIGKILL."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_same_adapter_and_steps, invoke, kill_then_resume, settings
from prefopt.data import read_jsonl


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _dpo(sft_run, rag_data, out, *extra):
    # the collected rejected answers: on-policy sampling would keep only the rows --max-steps uses
    invoke("dpo", "--model", str(sft_run), "--data", str(rag_data / "train.jsonl"), "--output-dir", str(out),
           "--max-steps", "3", "--batch-size", "2", "--loss", "sigmoid", "--learning-rate", "1e-2", "--seed", "3",
           "--on-policy", "0", *extra)
    return _losses(out)


def test_reference_strategies_agree(sft_run, rag_data, tmp_path):
    implicit = _dpo(sft_run, rag_data, tmp_path / "implicit", "--ref", "implicit")
    copy = _dpo(sft_run, rag_data, tmp_path / "copy", "--ref", "copy")
    pre = _dpo(sft_run, rag_data, tmp_path / "pre")  # the default
    assert implicit[0] == pytest.approx(0.6931472, abs=1e-6)
    assert copy == pytest.approx(implicit, abs=1e-5) and pre == pytest.approx(implicit, abs=1e-5)
    cached = list((tmp_path / "pre" / "ref_cache").rglob("*.arrow"))
    assert cached  # the reference log-probs live in the run dir
    assert json.loads((tmp_path / "pre" / "run.json").read_text())["ref"] == "precomputed"


def test_full_finetuning_with_a_copied_reference_and_curves(sft_run, rag_data, tmp_path):
    losses = _dpo(sft_run, rag_data, tmp_path / "full", "--full", "--ref", "copy")
    assert losses[0] == pytest.approx(0.6931472, abs=1e-6)
    run = json.loads((tmp_path / "full" / "run.json").read_text())
    assert run["weights"] == "full" and (tmp_path / "full" / "model.safetensors").is_file()
    assert (tmp_path / "full" / "curves.png").stat().st_size > 1000
    from prefopt.models import load_model, resolve

    trained = load_file(tmp_path / "full" / "model.safetensors")
    start = load_model(resolve(str(sft_run))).state_dict()
    changed = [k for k, v in trained.items() if k in start and not torch.allclose(v, start[k])]
    assert len(changed) > len(trained) // 2  # full fine-tuning moved the weights themselves


def test_full_needs_a_real_reference(sft_run, rag_data):
    from typer.testing import CliRunner

    from prefopt.cli import app

    result = CliRunner().invoke(app, ["dpo", "--model", str(sft_run), "--data", str(rag_data / "train.jsonl"), "--full",
                                  "--ref", "implicit"])
    assert result.exit_code == 2 and "--ref implicit needs a LoRA adapter" in result.output


def test_merge_and_chat_format_sft(tiny_model, tmp_path):
    data = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{2 * i}"}]} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sft"
    invoke("sft", "--model", tiny_model, "--data", str(data), "--output-dir", str(out), "--max-steps", "2",
           "--batch-size", "2", *settings(tmp_path / "merge.yaml", merge=True))
    from prefopt.models import load_model, resolve

    ids = torch.tensor([[1, 4, 7, 9]])
    merged = load_model(resolve(str(out / "merged"))).eval()
    chained = load_model(resolve(str(out))).eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, chained(input_ids=ids).logits, atol=1e-5)


def test_sft_both_orders_trains_every_row_and_its_reversed_copy(tiny_model, rag_data, tmp_path, monkeypatch):
    """--both-orders: SFTTrainer gets each row followed by the same row with its documents in reverse order."""
    import yaml

    import prefopt.data
    from prefopt.raft import prompt_documents

    given, real = [], prefopt.data.sft_dataset
    monkeypatch.setattr(prefopt.data, "sft_dataset", lambda rows: given.extend(rows) or real(rows))
    out = tmp_path / "sft"
    invoke("sft", "--model", tiny_model, "--data", str(rag_data / "train.jsonl"), "--output-dir", str(out),
           "--max-steps", "1", "--batch-size", "2", "--max-length", "512",
           *settings(tmp_path / "both.yaml", experimental={"both_orders": True}))
    collected = {r["id"]: r for r in read_jsonl(rag_data / "train.jsonl")}
    assert len(given) > 2 and len(given) % 2 == 0
    for row, copy in zip(given[0::2], given[1::2]):
        docs = prompt_documents(row["prompt"])
        assert row["prompt"] == collected[row["id"]]["prompt"] and copy["chosen"] == row["chosen"]
        assert len(docs) > 1 and prompt_documents(copy["prompt"]) == docs[::-1]
    assert yaml.safe_load((out / "config.yaml").read_text())["experimental"]["both_orders"] is True


def _sft_cmd(tiny_model, rag_data, out, *extra):
    return [sys.executable, "-m", "prefopt.cli", "sft", "--model", tiny_model, "--data", str(rag_data / "train.jsonl"),
            "--output-dir", str(out), "--max-steps", "12", "--batch-size", "2", "--save-steps", "2",
            "--learning-rate", "1e-2", "--seed", "7", *extra]


def test_sigkill_then_resume_gives_the_uninterrupted_adapter(tiny_model, rag_data, tmp_path):
    straight, killed = kill_then_resume(lambda out, *x: _sft_cmd(tiny_model, rag_data, out, *x), tmp_path)
    assert_same_adapter_and_steps(straight, killed, 12)


def test_qlora_without_a_gpu_is_a_clear_error(tiny_model, rag_data, tmp_path):
    from typer.testing import CliRunner

    from prefopt.cli import app

    args = ["sft", "--model", tiny_model, "--data", str(rag_data / "train.jsonl"), "--output-dir", str(tmp_path)]
    result = CliRunner().invoke(app, args + ["--qlora"])
    if not torch.cuda.is_available():
        assert result.exit_code == 2 and "--qlora needs a CUDA GPU and the bitsandbytes package" in result.output
    result = CliRunner().invoke(app, args + ["--qlora", "--full"])
    assert result.exit_code == 2 and "--full and --qlora exclude each other" in result.output


def test_lora_rank_pattern_gives_those_modules_their_rank_and_the_same_alpha_ratio(tiny_model, rag_data, tmp_path):
    from typer.testing import CliRunner

    from prefopt.cli import app

    invoke("sft", "--model", tiny_model, "--data", str(rag_data / "train.jsonl"), "--output-dir", str(tmp_path),
           "--max-steps", "1", "--batch-size", "2", "--lora-r", "4", "--lora-alpha", "8",
           *settings(tmp_path / "ranks.yaml", experimental={"lora_rank_pattern": "q_proj=12, v_proj=2"}))
    ranks = {k.split(".")[-3]: v.shape[0] for k, v in load_file(tmp_path / "adapter_model.safetensors").items()
             if "layers.0." in k and "lora_A" in k}
    assert ranks == {"q_proj": 12, "k_proj": 4, "v_proj": 2, "o_proj": 4, "gate_proj": 4, "up_proj": 4, "down_proj": 4}
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["rank_pattern"] == {"q_proj": 12, "v_proj": 2} and saved["alpha_pattern"] == {"q_proj": 24, "v_proj": 4}
    result = CliRunner().invoke(app, ["sft", "--model", tiny_model, "--data", str(rag_data / "train.jsonl"),
                                      *settings(tmp_path / "bad.yaml", experimental={"lora_rank_pattern": "q_proj:12"})])
    assert result.exit_code == 2 and "'q_proj:12' is not name=rank" in result.output


def test_checkpointing_is_off_by_default_and_changes_no_result(sft_run, rag_data, tmp_path):
    from prefopt.dpo import DPOConfig
    from prefopt.models import resolve
    from prefopt.train import trl_args

    # TRL 1.16 defaults to gradient checkpointing; prefopt's default (off, faster) must reach TRL explicitly
    assert trl_args(DPOConfig(data="x.jsonl", output_dir=str(tmp_path / "x")), resolve(str(sft_run)))[
        "gradient_checkpointing"] is False
    plain = _dpo(sft_run, rag_data, tmp_path / "plain")
    with_gc = _dpo(sft_run, rag_data, tmp_path / "gc", "--gradient-checkpointing")
    assert with_gc == pytest.approx(plain, abs=1e-5)
    norms = [[r["grad_norm"] for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())
              if "grad_norm" in r] for d in ("plain", "gc")]
    assert norms[1] == pytest.approx(norms[0], rel=1e-4)


def test_dpo_leaves_out_the_rows_without_the_oracle_unless_asked(sft_run, rag_data, tmp_path):
    """They abstain in the chosen answer; the rows each run trained on are in its precomputed-reference cache."""
    rows = [json.loads(line) for line in (rag_data / "train.jsonl").read_text().splitlines()]
    abstaining = {r["chosen"][0]["content"] for r in rows if not r["meta"]["oracle_in_context"]}
    assert abstaining  # collect's default p = 0.8 leaves the oracle out of some prompts

    def trained_on(out, *extra):
        _dpo(sft_run, rag_data, out, "--ref", "precomputed", *extra)
        cache = (out / "ref_cache" / "train.jsonl").read_text().splitlines()
        return [json.loads(line)["chosen"][0]["content"] for line in cache]

    default, kept = trained_on(tmp_path / "default"), trained_on(
        tmp_path / "kept", *settings(tmp_path / "kept.yaml", experimental={"abstain_rows": True}))
    assert not abstaining & set(default) and abstaining <= set(kept)
    assert len(kept) - len(default) == sum(not r["meta"]["oracle_in_context"] for r in rows)


def test_dpo_without_any_oracle_row_is_a_clear_error():
    from prefopt.dpo import without_abstentions
    from prefopt.errors import PrefoptError

    plain = {"prompt": "q", "chosen": "a", "rejected": "b"}  # imported preference data: no RAG metadata, kept
    assert without_abstentions([plain]) == [plain]
    with pytest.raises(PrefoptError, match="no row shows the oracle"):
        without_abstentions([{**plain, "meta": {"oracle_in_context": False}}])


def test_dpo_defaults_to_the_dpo_split_beside_the_sft_data(sft_run, rag_data, tmp_path):
    """Without --data, DPO trains on the dpo.jsonl that collect wrote beside the SFT run's data (questions SFT
    never saw), for 2 epochs; with no such file, --data is required."""
    import yaml

    from prefopt.dpo import DPOConfig
    from prefopt.errors import PrefoptError

    out = tmp_path / "dpo"
    invoke("dpo", "--model", str(sft_run), "--output-dir", str(out), "--max-steps", "1", "--batch-size", "2",
           "--ref", "precomputed", "--on-policy", "0", *settings(tmp_path / "s.yaml", hard_margin=0))  # every row once, as collected
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert Path(cfg["data"]) == rag_data / "dpo.jsonl" and cfg["epochs"] == 2
    trained = [json.loads(line) for line in (out / "ref_cache" / "train.jsonl").read_text().splitlines()]
    split = [json.loads(line) for line in (rag_data / "dpo.jsonl").read_text().splitlines()]
    assert trained and [r["rejected"] for r in trained] == [r["rejected"] for r in split]
    with pytest.raises(PrefoptError, match="--data is required"):
        DPOConfig(model=str(tmp_path))
