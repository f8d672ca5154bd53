"""DT5: a small T5 encoder with a projection head, standing in for T5-XXL in Neodragon's text path.

Neodragon distils the 4.7B-parameter T5-XXL encoder into a T5-base encoder (DistillT5, Wang et al.) whose
768-wide features are lifted to the teacher's 4096 by a ``Linear → ReLU → Dropout → Linear`` head; the
ContextAdapter then maps them to the transformer's width. The state-dict keys follow the official checkpoints
(``encoder.shared.weight``, ``encoder.encoder.block.{i}...``, ``final_projection.{0,3}.weight``) so they load as-is.
"""


import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    PreTrainedModel,
    T5Config,
    T5EncoderModel,
    T5PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput


# diffusers records plugin components by their module path in model_index.json and, when loading, looks for its
# loadable base classes (here `PreTrainedModel`) in that module's namespace.
__all__ = ["DT5Config", "DT5EncoderModel", "PreTrainedModel"]


class DT5Config(T5Config):
    r"""
    [`T5Config`] of the encoder plus the projection head's settings.

    Args:
        projection_dim (`int`, defaults to 4096): output width of the head (the teacher T5-XXL's ``d_model``).
        projection_dropout (`float`, defaults to 0.1): dropout between the two head layers (active in training only).
        All other arguments are [`T5Config`]'s; the head's input width is ``d_model``. The defaults are the released
        DT5's T5-v1.1-base encoder (768 wide, 12 layers of 12 heads, gated-GELU feed-forward of 2048, vocab 32128).
    """

    model_type = "dt5_encoder"

    d_model: int = 768
    d_ff: int = 2048
    num_layers: int = 12
    num_heads: int = 12
    feed_forward_proj: str = "gated-gelu"
    projection_dim: int = 4096
    projection_dropout: float = 0.1


class DT5EncoderModel(T5PreTrainedModel):
    r"""
    T5 encoder (``encoder``, a [`T5EncoderModel`]) followed by ``final_projection`` =
    ``Sequential(Linear(d_model → projection_dim, bias=False), ReLU, Dropout, Linear(projection_dim → projection_dim,
    bias=False))``, applied to every token. ``encoder.shared`` and ``encoder.encoder.embed_tokens`` are tied, as in
    T5EncoderModel; checkpoints holding either or both key load.
    """

    config_class = DT5Config
    # The outer model has no "base model" attribute: keeping the prefix unique stops transformers from trying to
    # strip or add a prefix when loading our own checkpoints.
    base_model_prefix = "dt5"
    _tied_weights_keys = {"encoder.encoder.embed_tokens.weight": "encoder.shared.weight"}
    _keys_to_ignore_on_load_unexpected = [r"^encoder\.decoder\."]

    def __init__(self, config: DT5Config):
        super().__init__(config)
        self.encoder = T5EncoderModel(config)
        self.final_projection = nn.Sequential(
            nn.Linear(config.d_model, config.projection_dim, bias=False),
            nn.ReLU(),
            nn.Dropout(config.projection_dropout),
            nn.Linear(config.projection_dim, config.projection_dim, bias=False),
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        head = getattr(self, "final_projection", None)
        if isinstance(module, nn.Linear) and head is not None and any(module is layer for layer in head):
            # Same scale rule as T5's feed-forward layers: std = initializer_factor * fan_in ** -0.5.
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_factor * module.in_features**-0.5)
        else:
            super()._init_weights(module)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.encoder.set_input_embeddings(new_embeddings)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput | tuple[torch.Tensor]:
        """Encode tokens and project them: ``[B, L]`` ids (and optional ``[B, L]`` mask) → ``[B, L, projection_dim]``.

        The result is cast to the encoder's dtype (T5 keeps its ``wo`` layers in fp32 under half precision, so the
        raw hidden state may be fp32). Extra keyword arguments go to the T5 encoder (e.g. ``output_hidden_states``).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("DT5EncoderModel needs exactly one of `input_ids` or `inputs_embeds`.")
        if input_ids is not None and input_ids.ndim != 2:
            raise ValueError(f"`input_ids` must have shape [batch, seq_len], got {tuple(input_ids.shape)}.")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        encoder_outputs = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, return_dict=True, **kwargs
        )
        hidden = encoder_outputs.last_hidden_state
        projection_dtype = self.final_projection[0].weight.dtype
        projected = self.final_projection(hidden.to(projection_dtype)).to(self.encoder.shared.weight.dtype)
        if not return_dict:
            return (projected,)
        return BaseModelOutput(
            last_hidden_state=projected,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )


AutoConfig.register(DT5Config.model_type, DT5Config, exist_ok=True)
AutoModel.register(DT5Config, DT5EncoderModel, exist_ok=True)
