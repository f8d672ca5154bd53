"""ContextAdapter: the MLP that maps (distilled) T5 token features into the transformer's text stream.

In Neodragon it replaces Pyramid-Flow's ``context_embedder`` (a single Linear 4096→1536): after the large T5-XXL
is swapped for the small DT5, a deeper adapter recovers the teacher's feature space. Every hidden layer after the
first, and the output layer, re-read the adapter's *original* input by concatenation (``cat([x, y], -1)``, x
first) rather than adding a residual, so the input stays visible at every depth. It acts token-wise.
"""

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class ContextAdapter(ModelMixin, ConfigMixin):
    r"""
    Skip-concatenation MLP applied to every token of a text sequence.

    Layer 0 is ``Linear(in_features → hidden_features[0])`` + activation; layer ``k ≥ 1`` is
    ``Linear(in_features + hidden_features[k-1] → hidden_features[k])`` + activation on ``cat([x, y], -1)``; the
    output is ``Linear(in_features + hidden_features[-1] → out_features)`` on ``cat([x, y], -1)`` with no activation.
    The defaults are Neodragon's released adapter (130,041,344 parameters).

    Parameters:
        in_features (`int`): width of the text-encoder features (DT5 projects to 4096).
        out_features (`int`): width of the transformer's text stream (1536).
        hidden_features (`Sequence[int]`): width of each hidden layer; at least one.
        activation (`str`): activation after each hidden layer; "gelu" is the exact (erf) GELU of the reference.
        dropout (`float`): dropout after each hidden activation (0 in the reference; useful when distilling).

    State-dict keys: ``layers.{k}.weight``/``layers.{k}.bias`` for the hidden layers, ``proj_out.weight``/
    ``proj_out.bias`` for the output layer (``diffusers_neodragon.loaders`` maps the official names).
    """

    @register_to_config
    def __init__(
        self,
        in_features: int = 4096,
        out_features: int = 1536,
        hidden_features: Sequence[int] = (4096, 4096, 4096, 4096),
        activation: str = "gelu",
        dropout: float = 0.0,
    ):
        super().__init__()
        hidden_features = tuple(int(h) for h in hidden_features)
        if len(hidden_features) == 0:
            raise ValueError("`hidden_features` must name at least one hidden layer width, got an empty sequence.")
        if in_features <= 0 or out_features <= 0 or any(h <= 0 for h in hidden_features):
            raise ValueError(
                f"All widths must be positive, got in_features={in_features}, out_features={out_features}, "
                f"hidden_features={hidden_features}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")

        widths_in = [in_features] + [in_features + h for h in hidden_features[:-1]]
        self.layers = nn.ModuleList(nn.Linear(w_in, w_out) for w_in, w_out in zip(widths_in, hidden_features))
        self.proj_out = nn.Linear(in_features + hidden_features[-1], out_features)
        self.act = get_activation(activation)
        self.hidden_dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases, as the reference initialises the adapter for training from
        scratch."""
        for linear in [*self.layers, self.proj_out]:
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Map ``[..., in_features]`` (typically ``[B, L, in_features]``) to ``[..., out_features]`` token-wise."""
        if hidden_states.shape[-1] != self.config.in_features:
            raise ValueError(
                f"ContextAdapter expects inputs whose last dimension is in_features={self.config.in_features}, "
                f"got shape {tuple(hidden_states.shape)}."
            )
        x = hidden_states
        y = self.hidden_dropout(self.act(self.layers[0](x)))
        for layer in self.layers[1:]:
            y = self.hidden_dropout(self.act(layer(torch.cat([x, y], dim=-1))))
        return self.proj_out(torch.cat([x, y], dim=-1))
