"""The rows DPO still has to learn, for `prefopt dpo` with `hard_margin: M` and `hard_repeat: K` (--config file).

At step 0 DPO's sigmoid (and IPO's) loss weighs every row alike, however far the reference model already prefers
its chosen answer: a collected rejected answer that the SFT model gives a log-prob of -25 against the chosen -0.3
pulls on the adapter as hard as one of its own mistakes. A row is hard when the reference (the SFT model)
prefers its chosen answer by less than M nats of summed log-probability: its own mistakes (``--on-policy``) and
the rejected answers it still finds likely. The hard rows are trained on K times for every once of the others
(K = 0: the hard rows alone). The margins of every row (after the
on-policy pass) are saved to OUTPUT_DIR/ref_margins.jsonl.
"""

from __future__ import annotations

from pathlib import Path

from prefopt.errors import PrefoptError


def ref_margins(model, tokenizer, rows: list[dict], batch_size: int = 8, share_prefix: bool = True) -> list[float]:
    """log p(chosen) - log p(rejected), summed over each completion's tokens, under `model`."""
    import torch

    from prefopt.models import to_device
    from prefopt.progress import Progress
    from prefopt.scoring import pair_logps, pair_texts

    to_device(model)
    model.eval()
    margins = []
    with torch.no_grad(), Progress(len(rows), "prefopt dpo: reference margins") as progress:
        for start in range(0, len(rows), batch_size):
            texts = [pair_texts(tokenizer, r) for r in rows[start:start + batch_size]]
            chosen, rejected = pair_logps(model, tokenizer, texts, share_prefix)
            margins += [c - r for (c, _), (r, _) in zip(chosen, rejected)]
            progress.advance(len(texts))
    model.train()
    return margins


def weigh_hard(model, tokenizer, rows: list[dict], margin: float, repeat: int, output_dir: str,
               share_prefix: bool = True, name: str = "ref_margins.jsonl") -> list[dict]:
    """The rows whose reference margin is below `margin` ("hard") `repeat` times in all after every row once, or
    with `repeat` 0 the hard rows alone."""
    from prefopt.data import write_rows

    margins = ref_margins(model, tokenizer, rows, share_prefix=share_prefix)
    write_rows(Path(output_dir) / name,
               [{"id": r.get("id"), "margin": round(m, 4), "hard": m < margin} for r, m in zip(rows, margins)])
    hard = [r for r, m in zip(rows, margins) if m < margin]
    print(f"prefopt dpo: hard_margin {margin:g}: {len(hard)} of {len(rows)} rows are hard (the reference prefers "
          f"their chosen answer by less than {margin:g} nats); "
          + (f"{len(hard)} rows to train on" if repeat == 0 else
             f"{len(rows) + len(hard) * (repeat - 1)} rows to train on, the hard ones {repeat} times"))
    if not hard and repeat == 0:
        raise PrefoptError(f"hard_margin {margin:g} finds no hard row (the smallest margin is {min(margins):.2f}), "
                           "and hard_repeat 0 trains on the hard rows only: raise hard_margin")
    return hard if repeat == 0 else rows + hard * (repeat - 1)
