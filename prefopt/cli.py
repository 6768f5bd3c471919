"""The `prefopt` command line. Each command's flags come from its stage's config dataclass (see config.py);
heavy libraries are imported only inside the stage that runs, so `prefopt --help` stays fast."""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from prefopt.collect.importers import ImportConfig
from prefopt.collect.rag import RagConfig
from prefopt.collect.resume import MergeConfig
from prefopt.config import command
from prefopt.dpo import DPOConfig
from prefopt.evaluate import EvalConfig
from prefopt.push import PushConfig
from prefopt.quickstart import QuickstartConfig
from prefopt.retriever import RetrieverConfig
from prefopt.sft import SFTConfig
from prefopt.validate import ValidateConfig


class PipelineOrder(TyperGroup):
    """`prefopt --help` lists the commands in the order a run uses them."""

    def list_commands(self, ctx):
        return sorted(super().list_commands(ctx), key=lambda c: ORDER.index(c) if c in ORDER else len(ORDER))


ORDER = ["collect", "validate", "sft", "dpo", "retriever", "eval", "push", "quickstart"]
app = typer.Typer(help="prefopt: RAG preference data, SFT, DPO/IPO with LoRA under DeepSpeed, eval, push.",
                  cls=PipelineOrder, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
collect_app = typer.Typer(help="Build preference triples (prompt / chosen / rejected).", no_args_is_help=True)
app.add_typer(collect_app, name="collect")
state: dict = {"debug": False}


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    local_rank: int = typer.Option(-1, "--local_rank", "--local-rank", hidden=True,
                                   help="Set by the DeepSpeed launcher; the rank reads LOCAL_RANK instead."),
) -> None:
    state["debug"] = debug


command(collect_app, "rag", RagConfig, "prefopt.collect.rag:run", state, group="collect")
command(collect_app, "import", ImportConfig, "prefopt.collect.importers:run", state, group="collect")
command(collect_app, "merge", MergeConfig, "prefopt.collect.resume:merge", state, group="collect")
command(app, "sft", SFTConfig, "prefopt.sft:run", state)
command(app, "dpo", DPOConfig, "prefopt.dpo:run", state)
command(app, "retriever", RetrieverConfig, "prefopt.retriever:run", state)
command(app, "eval", EvalConfig, "prefopt.evaluate:run", state)
command(app, "push", PushConfig, "prefopt.push:run", state)
command(app, "quickstart", QuickstartConfig, "prefopt.quickstart:run", state)
command(app, "validate", ValidateConfig, "prefopt.validate:run", state)


if __name__ == "__main__":  # the DeepSpeed launcher runs `python -m prefopt.cli ...` on each rank
    app()
