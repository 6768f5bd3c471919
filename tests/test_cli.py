"""The CLI in-process: help, config files with flag overrides, one-line errors, eval and quickstart."""

import json
import subprocess
import sys

import yaml
from typer.testing import CliRunner

from prefopt.cli import app
from prefopt.config import load_config
from prefopt.dpo import DPOConfig
from conftest import QUICKSTART

runner = CliRunner()


def test_help_lists_the_commands_and_is_fast():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("collect", "sft", "dpo", "retriever", "eval", "push", "quickstart"):
        assert name in result.output
    # --help must not import the heavy libraries
    code = "import sys, prefopt.cli; print(sorted(m for m in ('torch','trl','deepspeed','transformers','sentence_transformers') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def _flags(*command: str) -> list[str]:
    return [line.split()[0] for line in runner.invoke(app, [*command, "--help"]).output.splitlines()
            if line.startswith("  --") and not line.startswith("  --help")]  # the option column, not wrapped help


def test_help_is_lean_in_pipeline_order_and_plain():
    """At most 25 flags for dpo and 22 for collect rag; the rest are settings of the --config file (named at the
    end of --help) or experimental (not shown); commands in pipeline order; list defaults shown plainly."""
    dpo, rag = _flags("dpo"), _flags("collect", "rag")
    assert len(dpo) <= 25 and len(rag) <= 22, (len(dpo), len(rag))
    shown = runner.invoke(app, ["dpo", "--help"]).output
    assert "sft_weight" in shown and "hard_margin" in shown  # config-only: named in the epilog
    assert "on_policy_quotes" not in shown and "on-policy-quotes" not in shown  # experimental
    assert "--output-dir" in rag and "--out" not in rag  # --out: a hidden alias
    listed = runner.invoke(app, ["--help"]).output.split("Commands:")[1].splitlines()
    order = [line.split()[0] for line in listed if line.startswith("  ") and line.split()]
    assert order == ["collect", "validate", "sft", "dpo", "retriever", "eval", "push", "quickstart"]
    assert "[default: smollm2-135m]" in " ".join(runner.invoke(app, ["eval", "--help"]).output.split())


def test_experimental_settings_only_under_their_block(tmp_path):
    from prefopt.config import config_dict
    from prefopt.errors import PrefoptError

    top = tmp_path / "top.yaml"
    top.write_text(yaml.safe_dump({"data": "x.jsonl", "on_policy_quotes": True}))
    try:
        load_config(DPOConfig, top)
        raise AssertionError("an experimental setting at the top level must be refused")
    except PrefoptError as e:
        assert "on_policy_quotes: experimental; set under `experimental:`" in str(e)
    block = tmp_path / "block.yaml"
    block.write_text(yaml.safe_dump({"data": "x.jsonl", "hard_margin": 3.0, "experimental": {"on_policy_quotes": True}}))
    cfg = load_config(DPOConfig, block)
    assert cfg.on_policy_quotes is True and cfg.hard_margin == 3.0
    saved = config_dict(cfg)  # what a run dir's config.yaml holds: loads back to the same settings
    assert saved["experimental"]["on_policy_quotes"] is True and "on_policy_quotes" not in saved
    (tmp_path / "saved.yaml").write_text(yaml.safe_dump(saved))
    assert load_config(DPOConfig, tmp_path / "saved.yaml") == cfg
    result = runner.invoke(app, ["dpo", "--data", "x.jsonl", "--on-policy-quotes"])
    assert result.exit_code == 2 and "No such option" in result.output


def test_dpo_on_an_interrupted_sft_run_names_it(tmp_path):
    """Without --data, DPO reads the SFT run's data: a run dir killed before its run.json is named as such."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": "data/rag/train.jsonl"}))
    result = runner.invoke(app, ["dpo", "--model", str(tmp_path)])
    assert result.exit_code == 2 and "incomplete prefopt run dir" in result.output, result.output
    assert "--data is required" not in result.output


def test_config_file_then_flags_override(tmp_path):
    cfg_file = tmp_path / "dpo.yaml"
    cfg_file.write_text(yaml.safe_dump({"data": "x.jsonl", "beta": 0.3, "loss": "ipo"}))
    cfg = load_config(DPOConfig, cfg_file, {"beta": 0.7, "loss": None})
    assert (cfg.beta, cfg.loss, cfg.data, cfg.learning_rate) == (0.7, "ipo", "x.jsonl", 5e-5)


def test_bad_input_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("beta: 0.1\nnot_a_setting: 3\n")
    for args, needle in [
        (["dpo", "--data", "x.jsonl", "--loss", "nope"], "--loss: 'nope' is not one of"),
        (["dpo", "--config", str(bad), "--data", "x.jsonl"], "unknown setting(s) not_a_setting"),
        (["dpo", "--data", "x.jsonl", "--beta", "0"], "--beta must be > 0"),
        (["sft", "--data", str(tmp_path / "missing.jsonl")], "no such file"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert needle in result.output and "Traceback" not in result.output


def test_collect_rag_cli(tmp_path):  # --out: the hidden alias of --output-dir
    result = runner.invoke(app, ["collect", "rag", "--corpus", str(QUICKSTART / "corpus.jsonl"), "--questions",
                                 str(QUICKSTART / "questions.jsonl"), "--out", str(tmp_path), "--distractors", "2"])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["distractors"] == 2 and card["kept"]["train"] > 0


def test_eval_compares_models(tiny_model, rag_data, tmp_path):
    result = runner.invoke(app, ["eval", "--models", tiny_model, tiny_model, "--data", str(rag_data / "test.jsonl"),
                                 "--output-dir", str(tmp_path), "--limit", "4", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    m = results[tiny_model]
    assert 0 <= m["pref_accuracy"] <= 1 and m["n_pairs"] == 4 and m["n_questions"] == 4
    assert (tmp_path / "eval.md").read_text().startswith("| model |")


def test_mean_logps_matches_a_direct_computation(tiny_model):
    import torch

    from prefopt.scoring import mean_logps
    from prefopt.models import load_model, load_tokenizer, resolve

    spec = resolve(tiny_model)
    tok, model = load_tokenizer(spec), load_model(spec).eval()
    prompts, completions = ["Who founded it?", "A longer prompt here"], [" Bo Tran.", " 1873"]
    with torch.no_grad():
        got = mean_logps(model, tok, prompts, completions)
        for p, c, g in zip(prompts, completions, got):
            p_ids = tok(p, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p_ids + tok(c, add_special_tokens=False)["input_ids"]])
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
            want = torch.stack([logps[i - 1, ids[0, i]] for i in range(len(p_ids), ids.shape[1])]).mean()
            assert abs(g - want.item()) < 1e-5


def test_quickstart_end_to_end_on_a_tiny_model(tiny_model, tmp_path):
    result = runner.invoke(app, ["quickstart", "--model", tiny_model, "--output-dir", str(tmp_path),
                                 "--dpo-steps", "1", "--sft-epochs", "0.05"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "quickstart.json").read_text())
    assert set(summary) == {"base", "sft", "dpo", "seconds"}
    for key in ("base", "sft", "dpo"):
        assert 0 <= summary[key]["pref_accuracy"] <= 1 and 0 <= summary[key]["answer_accuracy"] <= 1


def test_settings_are_typed_and_finite_before_anything_loads(tmp_path):
    """YAML's `1e-4` (text to YAML 1.1) is the number; a wrong type or a non-finite number is one line naming the
    setting and what it expects, from a flag or from the file."""
    good = tmp_path / "good.yaml"
    good.write_text("data: x.jsonl\nlearning_rate: 1e-4\nbatch_size: 2.0\nmax_length: '512'\n")
    cfg = load_config(DPOConfig, good)
    assert (cfg.learning_rate, cfg.batch_size, cfg.max_length) == (1e-4, 2, 512)
    bad = tmp_path / "bad.yaml"
    for text, needle in [("epochs: two", "epochs: 'two' is not a number"),
                         ("batch_size: 2.5", "batch_size: 2.5 is not a whole number"),
                         ("full: 'yes'", "full: 'yes' is not true or false"),
                         ("loss: 3", "loss: 3 is not text"),
                         ("beta: .nan", "beta: nan is not a finite number"),
                         ("lora_dropout: 2.0", "lora_dropout must be in [0, 1)")]:
        bad.write_text(f"data: x.jsonl\n{text}\n")
        result = runner.invoke(app, ["dpo", "--config", str(bad)])
        assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output, result.output
    for flags, needle in [(["--learning-rate", "inf"], "--learning-rate: inf is not a finite number"),
                          (["--beta", "nan"], "--beta: nan is not a finite number"),
                          (["--learning-rate", "nan"], "--learning-rate: nan is not a finite number")]:
        result = runner.invoke(app, ["dpo", "--data", "x.jsonl", *flags])
        assert result.exit_code == 2 and needle in result.output, result.output


def test_ctrl_c_says_what_was_kept_and_how_to_go_on(monkeypatch, tmp_path):
    import prefopt.collect.rag
    import prefopt.sft

    def interrupt(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(prefopt.sft, "run", interrupt)
    monkeypatch.setattr(prefopt.collect.rag, "run", interrupt)
    result = runner.invoke(app, ["sft", "--data", "x.jsonl", "--output-dir", str(tmp_path / "s")])
    assert result.exit_code == 130 and f"prefopt sft: interrupted. The checkpoints saved so far (--save-steps) are " \
        f"in {tmp_path / 's'}; the same command with --resume" in " ".join(result.output.split())
    result = runner.invoke(app, ["collect", "rag", "--corpus", "quickstart", "--output-dir", str(tmp_path / "c")])
    assert result.exit_code == 130 and "Every finished question is kept in" in result.output
