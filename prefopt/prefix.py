"""Prefix-shared DPO: each preference pair runs as one sequence, so its long RAG prompt is computed once.

TRL's DPOTrainer runs ``prompt + chosen`` and ``prompt + rejected`` as two rows of a batch: the prompt (the
question and K documents, most of the tokens) goes through the model twice, in the policy's forward and
backward and in the reference pass. Here the model sees one row per pair::

    tokens     x0 .. x(p-1) | c0 .. c(n-1)   | x(p-1)' | r0 .. r(m-1)
    positions  0  .. p-1    | p  .. p+n-1    | p-1     | p  .. p+m-1
    attends    the prompt   | prompt, chosen | x0 .. x(p-2), itself, the rejected tokens before it

The copy x(p-1)' of the last prompt token sees what x(p-1) sees, at the same position, so its hidden state is
that of x(p-1): it predicts r0, as x(p-1) does in the rejected row of the two-row form. The rejected tokens never
see the chosen ones, and continue the prompt's positions: every answer token gets the same context, position and
hence the same log-prob as in the two-row form (equal up to float summation order; tests/test_prefix.py).

The packing sits under TRL: `share_prefixes(model)` wraps the forward of the model TRL's fused LM head patched
(``model(..., labels=..., fused_lm_head=True)``), turns TRL's two-row batch into packed rows with a 4D
attention mask and position ids, and hands TRL back per-token fields in its own layout. TRL's losses, metrics,
reference handling (a disabled adapter, a copy, or precomputed log-probs) and DeepSpeed wrapping stay TRL's.
"""

from __future__ import annotations

import functools
import types

FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


def pack_pairs(input_ids, attention_mask, labels):
    """TRL's two-row batch (rows 0..B-1 prompt + chosen, rows B..2B-1 prompt + rejected; `labels` are the tokens
    of the answers, -100 elsewhere) as B packed rows: (input_ids, 4D mask as booleans, position_ids,
    shift_labels, index) where `index[r, j]` is the packed flat position whose next-token field TRL expects at
    [r, j] of its (2B, L-1) layout, or -1. None when a pair does not share its prompt (then the caller runs the
    two-row form)."""
    import torch

    two_b, length = input_ids.shape
    b = two_b // 2
    lengths = attention_mask.sum(dim=1).tolist()
    scored = (labels != -100).tolist()
    rows, plan = [], []
    for i in range(b):
        c_len, r_len = lengths[i], lengths[b + i]
        p = next((j for j in range(c_len) if scored[i][j]), c_len)
        p_r = next((j for j in range(r_len) if scored[b + i][j]), r_len)
        if p != p_r or p < 1 or not torch.equal(input_ids[i, :p], input_ids[b + i, :p]):
            return None
        ids = input_ids[i]
        rows.append(torch.cat([ids[:c_len], ids[p - 1:p], input_ids[b + i, p:r_len]]))
        plan.append((p, c_len - p, r_len - p))
    width = max(len(r) for r in rows)
    device = input_ids.device
    packed = torch.zeros(b, width, dtype=input_ids.dtype, device=device)
    positions = torch.zeros(b, width, dtype=torch.long, device=device)
    shift_labels = torch.full((b, width), -100, dtype=labels.dtype, device=device)
    segment = torch.full((b, width), -1, dtype=torch.long, device=device)  # 0 prompt, 1 chosen, 2 rejected, -1 pad
    index = torch.full((two_b, length - 1), -1, dtype=torch.long)
    for i, (row, (p, n, m)) in enumerate(zip(rows, plan)):
        t = len(row)
        packed[i, :t] = row
        positions[i, :t] = torch.cat([torch.arange(p + n), torch.arange(p - 1, p + m)])
        segment[i, :t] = torch.tensor([0] * p + [1] * n + [2] * (m + 1))
        shift_labels[i, p - 1:p + n - 1] = row[p:p + n]  # x(p-1) predicts c0, ..., c(n-2) predicts c(n-1)
        shift_labels[i, p + n:t - 1] = row[p + n + 1:t]  # the copy predicts r0, ..., r(m-2) predicts r(m-1)
        base = i * width
        index[i, p - 1:p + n - 1] = torch.arange(base + p - 1, base + p + n - 1)
        index[b + i, p - 1:p + m - 1] = torch.arange(base + p + n, base + p + n + m)
    q, k = segment.unsqueeze(2), segment.unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    last_prompt = torch.zeros(b, 1, width, dtype=torch.bool, device=device)
    for i, (p, _, _) in enumerate(plan):
        last_prompt[i, 0, p - 1] = True
    sees = ((k == 0) & ~((q == 2) & last_prompt)) | ((k == q) & (q > 0))
    sees = (sees & causal) | torch.eye(width, dtype=torch.bool, device=device)  # a pad sees itself: no empty row
    return packed, sees.unsqueeze(1), positions, shift_labels, index.to(device)


def packable(model) -> str | None:
    """The model's attention implementation when it takes the packed rows' 4D mask (sdpa, eager), else None."""
    impl = getattr(model.config, "_attn_implementation", None)
    return impl if impl in ("sdpa", "eager") else None


def mask_for(sees, impl: str, dtype):
    """pack_pairs' boolean mask as `impl` takes it: sdpa reads the booleans as they are; eager adds the mask to
    its scores (0 where a token may attend, the dtype's minimum elsewhere)."""
    import torch

    if impl == "sdpa":
        return sees
    return torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill(~sees, torch.finfo(dtype).min)


def share_prefixes(model) -> None:
    """Wrap `model.forward` (already patched by TRL's `add_fused_lm_head`): a call with `fused_lm_head=True` on a
    two-row DPO batch runs packed and returns TRL's per-token fields in TRL's layout. Any other call is unchanged."""
    import torch

    inner = model.forward

    @functools.wraps(inner)
    def forward(self, *args, fused_lm_head=False, labels=None, **kwargs):
        input_ids, attention_mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        impl = packable(self)
        if not fused_lm_head or args or input_ids is None or attention_mask is None or attention_mask.dim() != 2 \
                or input_ids.size(0) % 2 or impl is None or kwargs.get("output_router_logits") \
                or "shift_labels" in kwargs or "position_ids" in kwargs:
            return inner(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        packed = pack_pairs(input_ids, attention_mask, labels)
        if packed is None:
            return inner(fused_lm_head=True, labels=labels, **kwargs)
        ids, sees, positions, shift_labels, index = packed
        mask = mask_for(sees, impl, self.get_input_embeddings().weight.dtype)
        kwargs.update(input_ids=ids, attention_mask=mask, position_ids=positions)
        out = inner(fused_lm_head=True, shift_labels=shift_labels, **kwargs)
        valid = index >= 0
        for name in FIELDS:
            value = getattr(out, name, None)
            if value is not None:
                flat = value.reshape(-1)[index.clamp(min=0)]
                out[name] = flat.masked_fill(~valid, 0) if flat.dtype != torch.bool else flat & valid
        return out

    forward.prefix_shared = True
    model.forward = types.MethodType(forward, model)


@functools.cache
def trainer_class():
    """prefopt's DPO trainer: TRL's DPOTrainer, built on first use (eval's scoring packs too, without TRL).

    - ``prefix_sharing=True``: the policy and the reference (also when precomputed) run each pair as one packed row.
    - ``base_reference=True``: given a model whose adapter is trained already (dpo's later on-policy rounds), TRL
      makes its reference a frozen copy of that adapter ("ref"); here that copy starts at zero (LoRA's B = 0), so
      the reference stays the model under the adapter: the SFT model."""
    import trl

    class PrefoptDPOTrainer(trl.DPOTrainer):
        def __init__(self, *args, prefix_sharing: bool = True, base_reference: bool = False, **kwargs):
            self._prefix_sharing, self._base_reference = prefix_sharing, base_reference
            super().__init__(*args, **kwargs)
            self._prepare()

        def _precompute_ref_logps(self, *args, **kwargs):
            self._prepare()  # TRL precomputes inside __init__, after patching its fused head
            return super()._precompute_ref_logps(*args, **kwargs)

        def _prepare(self) -> None:
            if self._base_reference:
                for name, param in self.accelerator.unwrap_model(self.model).named_parameters():
                    if ".ref." in name and "lora_B" in name:
                        param.data.zero_()
            if not self._prefix_sharing:
                return
            for model in (self.model, self.ref_model):
                if model is not None:
                    model = self.accelerator.unwrap_model(model)
                    model = model.get_base_model() if hasattr(model, "get_base_model") else model
                    if not getattr(model.forward, "prefix_shared", False):
                        share_prefixes(model)

    return PrefoptDPOTrainer
