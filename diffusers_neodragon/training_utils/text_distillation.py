# SPDX-License-Identifier: Apache-2.0
"""Text-encoder distillation (Neodragon's Operation 1): the tokens the transformer's blocks read, for a teacher
(``CE(T5(prompt))``) and a student (``CA(DT5(prompt))``, or ``CE(CA(DT5(prompt)))`` in expansion mode), the loss
``w_mse · MSE + w_cd · (1 − cos)`` over the valid (unpadded) tokens, and the held-out agreement figures.

Modes (the paper's):

* ``RM`` (replacement): the ContextAdapter replaces the transformer's ``context_embedder``; t̂ = CA(DT5(p)).
  DT5 is frozen when it is pretrained; a newly initialised DT5 has nothing to keep, so it trains (as in TDT5).
* ``EM`` (expansion): the ContextAdapter maps DT5's features into the teacher T5's space and the frozen
  ``context_embedder`` stays in the transformer; t̂ = CE(CA(DT5(p))). Same DT5 rule as RM.
* ``TDT5``: RM's layout, DT5 trained with the adapter.
* ``LORA``: RM's layout, the adapter trained with LoRA adapters on DT5's attention and feed-forward layers (peft).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


MODES = ("RM", "EM", "TDT5", "LORA")
# The modes whose saved pipeline keeps the transformer's context_embedder after the adapter.
EXPANSION_MODES = ("EM",)
# T5's attention and (gated) feed-forward projections: where LORA mode puts its adapters.
T5_LORA_TARGET_MODULES = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")


def dt5_is_trained(mode: str, dt5_is_pretrained: bool) -> bool:
    """Whether DT5's own weights train in ``mode``: always in TDT5, never in LORA (its adapters do), and in RM/EM
    only when DT5 is newly initialised (a frozen random encoder would give the adapter nothing to align)."""
    if mode not in MODES:
        raise ValueError(f"Unknown distillation mode {mode!r}; expected one of {MODES}.")
    if mode == "TDT5":
        return True
    if mode == "LORA":
        return False
    return not dt5_is_pretrained


def tokenize(tokenizer, texts: Sequence[str], max_length: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` [B, max_length], padded and truncated as the pipeline tokenises."""
    tokens = tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True,
                       return_tensors="pt")
    return tokens.input_ids.to(device), tokens.attention_mask.to(device)


def text_stream_tokens(
    text_encoder: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    context_adapter: torch.nn.Module | None = None,
    context_embedder: torch.nn.Module | None = None,
) -> torch.Tensor:
    """The text tokens the transformer's blocks read: ``context_embedder(context_adapter(text_encoder(ids)))``, each
    stage present only when given. Teacher: encoder + embedder; RM student: encoder + adapter; EM: all three.
    [B, L, width]; padded positions hold whatever the layers make of padding (mask them)."""
    tokens = text_encoder(input_ids, attention_mask=attention_mask).last_hidden_state
    if context_adapter is not None:
        tokens = context_adapter(tokens)
    if context_embedder is not None:
        tokens = context_embedder(tokens.to(context_embedder.weight.dtype))
    return tokens


def _valid(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None):
    if prediction.shape != target.shape:
        raise ValueError(f"Prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape.")
    if mask is not None and mask.shape != prediction.shape[:-1]:
        raise ValueError(f"The mask {tuple(mask.shape)} must cover the tokens {tuple(prediction.shape[:-1])}.")
    prediction, target = prediction.float(), target.float()
    if mask is None:
        return prediction.reshape(-1, prediction.shape[-1]), target.reshape(-1, target.shape[-1])
    keep = mask.bool()
    if not keep.any():
        raise ValueError("The mask keeps no token.")
    return prediction[keep], target[keep]


def token_errors(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None):
    """Per valid token: ``(mse, cosine)`` [N] — the mean over features of (t̂ − t)², and cos(t̂, t)."""
    prediction, target = _valid(prediction, target, mask)
    mse = (prediction - target).pow(2).mean(-1)
    cosine = F.cosine_similarity(prediction, target, dim=-1, eps=1e-8)
    return mse, cosine


def token_distillation_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    mse_weight: float = 1.0,
    cd_weight: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The paper's ``L = w_mse · MSE + w_cd · (1 − cos)``, averaged over the valid tokens of the batch.

    ``prediction``/``target`` [B, L, D]; ``mask`` [B, L] (1 = real token; ``None`` = all). MSE is the per-element
    mean of (t̂ − t)² over a token's features (the scale that does not grow with the width). Returns the loss and
    its terms (``mse``, ``cosine_distance``) as floats for logging.
    """
    mse, cosine = token_errors(prediction, target, mask)
    mse, distance = mse.mean(), (1.0 - cosine).mean()
    loss = mse_weight * mse + cd_weight * distance
    return loss, {"mse": mse.item(), "cosine_distance": distance.item()}


class TokenAgreement:
    """Running mean of the per-token MSE and cosine over many batches (held-out evaluation)."""

    def __init__(self):
        self.mse_sum, self.cosine_sum, self.count = 0.0, 0.0, 0

    def update(self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        mse, cosine = token_errors(prediction, target, mask)
        self.mse_sum += mse.double().sum().item()
        self.cosine_sum += cosine.double().sum().item()
        self.count += mse.numel()

    def result(self) -> dict[str, float]:
        """``{"mse", "cosine", "tokens"}``: the means over every valid token seen."""
        if not self.count:
            raise ValueError("No token was evaluated.")
        return {"mse": self.mse_sum / self.count, "cosine": self.cosine_sum / self.count, "tokens": self.count}
