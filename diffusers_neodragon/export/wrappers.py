"""Export wrappers: each pipeline component as an ``nn.Module`` with plain, fixed-shape tensor inputs and outputs.

The wrappers call the models' own ``forward``; they only pack what an ahead-of-time compiled NPU graph cannot take
as it is into plain, static-shape tensors:

* **Transformer** (:class:`TransformerStageWrapper`): one graph per pyramid stage, the history padded to the
  largest history the generation loop uses at that stage (see :class:`StageLayout`). The layout-dependent parts of
  the model's attention are inputs computed on the host (:func:`stage_attention_inputs`) and handed to the model's
  forward through its precomputed-layout arguments: an *additive float mask* ``attention_bias`` (instead of the
  boolean prefix mask + unmasked fused attention, and covering the padding), the temporal RoPE ``rope_cos`` /
  ``rope_sin`` tables (instead of frame indices, which would count the padded frames) and the timestep projection
  ``timestep_proj``. The velocity of the noisy clip equals the unpadded model's.
* **Text** (:class:`TextEncoderWrapper`): DT5 + ContextAdapter on 128 padded tokens with their mask.
* **Pooled text** (:class:`PooledTextWrapper`): CLIP-L / CLIP-G ``text_embeds`` concatenated.
* **Decoder** (:class:`DecoderStepWrapper`): one latent frame per call; the MemBlock memories (the decoder's only
  state) are explicit inputs and outputs. The first call passes zero memories, exactly as the model starts, and the
  host keeps only its last output frame (the model's "drop the first 7 frames").
* **Full causal decoder** (:class:`CausalDecoderStepWrapper`): one latent frame per call too, the front context of
  every causal conv (its ``kernel_t - 1`` last padded input frames) an explicit input and output. Its first latent
  frame needs a graph of its own (``first=True``): each temporal upsampling drops its first output frame there, which
  changes what every later layer sees (not a host-side trim of the output as for the tiny decoder).
* **VAE encoder** (:class:`VaeEncoderWrapper`) for the first frame, **QuickSRNet** (:class:`SuperResolutionWrapper`),
  and the first-frame text-to-image parts (:class:`UNetWrapper`, :class:`ImageVaeDecoderWrapper`,
  :class:`ClipHiddenWrapper`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from torch import nn

from ..models.autoencoders.autoencoder_asymmetric import MemBlock
from ..models.autoencoders.autoencoder_causal_video import CausalVideoDecoder
from ..models.autoencoders.causal_video_blocks import CausalConv3d, CausalTemporalUpsample2x
from ..models.transformers.transformer_neodragon import temporal_rope_frequencies


MAX_HISTORY_SLOTS = 4
MAX_DECODER_MEMORIES = 16
# Added to the attention scores of masked keys. Finite (so a fully masked row cannot give NaN on any backend), far
# below the score range of a qk-normalised DiT (exp() of the difference is below 1e-20), and small enough not to
# spend a w8a16 graph's 16-bit activation grid on it: -1e4 made each step of the scores' grid 100x coarser.
DEFAULT_MASK_VALUE = -100.0


class _ExportModule(nn.Module):
    """Base of the wrappers (``config.return_dict`` as diffusers models have it)."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(return_dict=True)


# --------------------------------------------------------------------------------------------------- transformer


@dataclass(frozen=True)
class HistorySlot:
    """One fixed-shape history input: ``frames`` latent frames at pyramid ``level`` (0 = lowest resolution)."""

    name: str
    level: int
    frames: int
    height: int  # latent rows at this level
    width: int


@dataclass(frozen=True)
class StageLayout:
    """Token layout of one stage graph: [text, history slots (oldest first), noisy clip].

    The generation loop conditions latent frame ``u`` (u = 1 .. num_latent_frames - 1; u = 0 for a DiT-made first
    frame) at stage ``s`` on the history given by ``PyramidalDMDScheduler.history_conditions``: the newest frame at
    level ``s``, one frame at each level ``s-1 .. 1``, and all older frames at level 0. The slots hold the largest
    such history (u = num_latent_frames - 1); a smaller one fills the slots right-aligned and the rest is masked.
    """

    stage: int
    num_latent_frames: int
    text_len: int
    patch_size: int
    channels: int
    noisy_height: int
    noisy_width: int
    slots: tuple[HistorySlot, ...] = field(default_factory=tuple)

    def tokens_per_frame(self, height: int, width: int) -> int:
        return (height // self.patch_size) * (width // self.patch_size)

    @property
    def num_noisy_tokens(self) -> int:
        return self.tokens_per_frame(self.noisy_height, self.noisy_width)

    @property
    def num_image_tokens(self) -> int:
        return sum(s.frames * self.tokens_per_frame(s.height, s.width) for s in self.slots) + self.num_noisy_tokens

    @property
    def seq_len(self) -> int:
        return self.text_len + self.num_image_tokens

    def to_dict(self) -> dict:
        return {
            "stage": self.stage, "num_latent_frames": self.num_latent_frames, "text_len": self.text_len,
            "patch_size": self.patch_size, "channels": self.channels, "noisy_height": self.noisy_height,
            "noisy_width": self.noisy_width, "seq_len": self.seq_len,
            "slots": [dict(name=s.name, level=s.level, frames=s.frames, height=s.height, width=s.width)
                      for s in self.slots],
        }

    @classmethod
    def from_dict(cls, data: dict) -> StageLayout:
        slots = tuple(HistorySlot(**s) for s in data["slots"])
        keys = ("stage", "num_latent_frames", "text_len", "patch_size", "channels", "noisy_height", "noisy_width")
        return cls(**{k: data[k] for k in keys}, slots=slots)


def stage_layout(
    stage: int, num_stages: int, num_latent_frames: int, latent_height: int, latent_width: int, text_len: int,
    patch_size: int, channels: int,
) -> StageLayout:
    """The fixed layout of ``stage`` for videos of up to ``num_latent_frames`` latent frames (full-res latent size)."""
    if not 0 <= stage < num_stages:
        raise ValueError(f"stage must be in [0, {num_stages - 1}], got {stage}")
    if num_stages > MAX_HISTORY_SLOTS:
        raise ValueError(f"at most {MAX_HISTORY_SLOTS} pyramid stages are supported, got {num_stages}")

    def size(level):
        factor = 2 ** (num_stages - 1 - level)
        if latent_height % (factor * patch_size) or latent_width % (factor * patch_size):
            raise ValueError(
                f"latent {latent_height}x{latent_width} must be divisible by {factor * patch_size} at level {level}"
            )
        return latent_height // factor, latent_width // factor

    max_history = num_latent_frames - 1
    slots = []
    # Level-0 slot: everything older than the frames kept at levels 1..stage (at stage 0, the whole history).
    low = max_history if stage == 0 else max(0, max_history - stage)
    if low > 0:
        slots.append(HistorySlot("history_0", 0, low, *size(0)))
    for level in range(1, stage + 1):
        # Level `level` holds frame u - 1 - (stage - level), present once u >= stage - level + 1.
        if max_history >= stage - level + 1:
            slots.append(HistorySlot(f"history_{level}", level, 1, *size(level)))
    h, w = size(stage)
    return StageLayout(stage, num_latent_frames, text_len, patch_size, channels, h, w, tuple(slots))


def pack_history(
    layout: StageLayout, conditions: Sequence[torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Put the clips of ``history_conditions(...)`` (oldest first) into the layout's zero-padded slots.

    Clips are grouped by resolution (the level-0 clips of stage 0 are concatenated); each slot is filled
    right-aligned. Returns the slot tensors and the number of valid frames in each slot.
    """
    by_size: dict[tuple[int, int], list[torch.Tensor]] = {}
    for clip in conditions:
        by_size.setdefault(tuple(clip.shape[-2:]), []).append(clip)
    tensors, valid = {}, {}
    used = set()
    for slot in layout.slots:
        clips = by_size.get((slot.height, slot.width), [])
        used.add((slot.height, slot.width))
        frames = torch.cat(clips, dim=2) if clips else None
        count = 0 if frames is None else frames.shape[2]
        if count > slot.frames:
            raise ValueError(f"{count} history frames do not fit slot {slot.name} ({slot.frames} frames)")
        ref = frames if frames is not None else (conditions[0] if conditions else None)
        batch = 1 if ref is None else ref.shape[0]
        dtype = torch.float32 if ref is None else ref.dtype
        padded = torch.zeros(batch, layout.channels, slot.frames, slot.height, slot.width, dtype=dtype)
        if count:
            padded[:, :, slot.frames - count :] = frames
        tensors[slot.name] = padded
        valid[slot.name] = count
    leftover = set(by_size) - used
    if leftover:
        raise ValueError(f"history clips of size {sorted(leftover)} have no slot in the stage-{layout.stage} layout")
    return tensors, valid


def stage_attention_inputs(
    layout: StageLayout,
    valid_frames: dict[str, int],
    text_mask: torch.Tensor | None,
    head_dim: int,
    rope_theta: float,
    mask_value: float = DEFAULT_MASK_VALUE,
) -> dict[str, torch.Tensor]:
    """Host-side layout inputs of a stage graph: ``attention_bias`` [1, 1, S, S] and ``rope_cos/sin`` [N, 1, d/2].

    Valid tokens follow the model's rule exactly: query i sees key j iff j is valid and frame(i) >= frame(j)
    (text counts as frame 0; the noisy clip is the newest frame, so it sees everything valid). Padded tokens are
    never keys of a valid query; each padded query sees only itself (its output is discarded), which keeps every
    softmax row finite. Frame indices are the chronological indices of the *valid* frames, as in the unpadded call.
    """
    text_valid = torch.ones(layout.text_len, dtype=torch.bool) if text_mask is None else text_mask.reshape(-1).bool()
    if text_valid.numel() != layout.text_len:
        raise ValueError(f"text mask has {text_valid.numel()} tokens, the layout {layout.text_len}")
    frame_ids, valid = [torch.zeros(layout.text_len, dtype=torch.long)], [text_valid]
    next_frame = 0
    for slot in layout.slots:
        count = valid_frames.get(slot.name, 0)
        per_frame = layout.tokens_per_frame(slot.height, slot.width)
        for index in range(slot.frames):
            is_valid = index >= slot.frames - count
            frame_ids.append(torch.full((per_frame,), next_frame if is_valid else 0, dtype=torch.long))
            valid.append(torch.full((per_frame,), is_valid, dtype=torch.bool))
            next_frame += int(is_valid)
    frame_ids.append(torch.full((layout.num_noisy_tokens,), next_frame, dtype=torch.long))
    valid.append(torch.ones(layout.num_noisy_tokens, dtype=torch.bool))
    frame_ids, valid = torch.cat(frame_ids), torch.cat(valid)

    allowed = (frame_ids[:, None] >= frame_ids[None, :]) & valid[None, :] & valid[:, None]
    allowed |= torch.eye(len(valid), dtype=torch.bool) & ~valid[:, None]
    bias = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, mask_value)
    cos, sin = temporal_rope_frequencies(frame_ids[layout.text_len :], head_dim, rope_theta)
    return {"attention_bias": bias[None, None], "rope_cos": cos, "rope_sin": sin}


def timestep_projection(timestep: torch.Tensor, params: dict[str, float]) -> torch.Tensor:
    """``NeodragonTransformer3DModel.timestep_projection`` from its recorded ``params``, for hosts (the ONNX
    pipeline) that have the graphs but not the torch model."""
    from diffusers.models.embeddings import get_timestep_embedding

    return get_timestep_embedding(
        timestep.reshape(-1).float(), int(params["num_channels"]), flip_sin_to_cos=bool(params["flip_sin_to_cos"]),
        downscale_freq_shift=float(params["downscale_freq_shift"]), scale=float(params["scale"]),
    )


def timestep_projection_params(transformer) -> dict[str, float]:
    proj = transformer.time_text_embed.time_proj
    return {"num_channels": proj.num_channels, "flip_sin_to_cos": proj.flip_sin_to_cos,
            "downscale_freq_shift": proj.downscale_freq_shift, "scale": proj.scale}


class TransformerStageWrapper(_ExportModule):
    """One pyramid stage of ``NeodragonTransformer3DModel`` with fixed-shape inputs (see :class:`StageLayout`).

    Inputs: ``hidden_states`` (noisy clip [1, C, 1, h, w]), the history slots ``history_k``, ``encoder_hidden_states``
    [1, text_len, width], ``pooled_projections`` [1, P], ``timestep_proj`` [1, 256] (:func:`timestep_projection` of
    the raw 0-1000 timestep), ``attention_bias`` [1, 1, S, S], ``rope_cos`` / ``rope_sin`` [N_img, 1, head_dim / 2].
    Output ``sample``: the velocity [1, C, 1, h, w]. The wrapper only gathers the history slots and calls the model's
    own ``forward`` with the precomputed layout (``attention_bias``, ``rotary_emb``, ``timestep_proj``).

    The sinusoidal timestep projection (``time_text_embed.time_proj``, weight-free) runs on the host: in fp16 on the
    HTP, ``sin``/``cos`` of angles up to 1000 rad lose most of their precision (max error grew from 1e-2 at t=1 to
    2e-1 at t=999 on the tiny model), while its [1, 256] result is harmless in any precision.
    """

    def __init__(self, transformer, layout: StageLayout):
        super().__init__()
        self.transformer = transformer
        self.layout = layout

    @property
    def input_names(self) -> list[str]:
        return ["hidden_states", *[s.name for s in self.layout.slots], "encoder_hidden_states", "pooled_projections",
                "timestep_proj", "attention_bias", "rope_cos", "rope_sin"]

    def forward(
        self,
        hidden_states: torch.Tensor,
        history_0: torch.Tensor | None = None,
        history_1: torch.Tensor | None = None,
        history_2: torch.Tensor | None = None,
        history_3: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        timestep_proj: torch.Tensor | None = None,
        attention_bias: torch.Tensor | None = None,
        rope_cos: torch.Tensor | None = None,
        rope_sin: torch.Tensor | None = None,
    ) -> torch.Tensor:
        given = {"history_0": history_0, "history_1": history_1, "history_2": history_2, "history_3": history_3}
        history = [given[slot.name] for slot in self.layout.slots]
        needed = (hidden_states, *history, encoder_hidden_states, pooled_projections, timestep_proj, attention_bias,
                  rope_cos, rope_sin)
        if any(value is None for value in needed):
            raise ValueError(f"the stage-{self.layout.stage} graph needs inputs {self.input_names}")
        return self.transformer(
            hidden_states, encoder_hidden_states, pooled_projections, history=history, return_dict=False,
            timestep_proj=timestep_proj, attention_bias=attention_bias, rotary_emb=(rope_cos, rope_sin),
        )[0]


# ---------------------------------------------------------------------------------------------------------- text


class TextEncoderWrapper(_ExportModule):
    """``input_ids`` [1, L] int32 + ``attention_mask`` [1, L] → ``text_embeds`` [1, L, width] (DT5 + ContextAdapter)."""

    def __init__(self, text_encoder, context_adapter=None):
        super().__init__()
        self.text_encoder = text_encoder
        self.context_adapter = context_adapter

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        embeds = self.text_encoder(input_ids.long(), attention_mask=attention_mask.long()).last_hidden_state
        if self.context_adapter is not None:
            embeds = self.context_adapter(embeds)
        return embeds


class PooledTextWrapper(_ExportModule):
    """``input_ids`` / ``input_ids_2`` (each CLIP tokenizer's ids, int32) → ``pooled_projections`` = their
    ``text_embeds`` concatenated, as ``NeodragonPipeline._pooled_embeddings``."""

    def __init__(self, text_encoder=None, text_encoder_2=None):
        super().__init__()
        if text_encoder is None and text_encoder_2 is None:
            raise ValueError("PooledTextWrapper needs at least one CLIP text encoder")
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2

    def forward(self, input_ids: torch.Tensor | None = None, input_ids_2: torch.Tensor | None = None):
        pooled = []
        for ids, encoder in ((input_ids, self.text_encoder), (input_ids_2, self.text_encoder_2)):
            if encoder is not None:
                pooled.append(encoder(ids.long()).text_embeds)
        return torch.cat(pooled, dim=-1)


class ClipHiddenWrapper(_ExportModule):
    """A CLIP text encoder for SDXL: ``input_ids`` → (``hidden_states`` = penultimate layer, ``pooled``)."""

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor):
        out = self.text_encoder(input_ids.long(), output_hidden_states=True)
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
        return out.hidden_states[-2], pooled


# ------------------------------------------------------------------------------------------------------- decoder


def is_streaming_decoder(decoder) -> bool:
    """Whether ``decoder`` is a tiny streaming decoder (``TinyVideoDecoder``: MemBlock memories are its only state),
    the kind :class:`DecoderStepWrapper` exports."""
    return isinstance(getattr(decoder, "blocks", None), nn.Sequential) and hasattr(decoder, "frames_to_trim") and any(
        isinstance(block, MemBlock) for block in decoder.blocks)


def decoder_memory_blocks(decoder) -> list[MemBlock]:
    return [block for block in decoder.blocks if isinstance(block, MemBlock)]


def decoder_memory_shapes(vae, latent_height: int, latent_width: int) -> list[tuple[int, ...]]:
    """Shapes [1, C, H, W] of every MemBlock memory for one latent frame of this size (found by a dry run)."""
    decoder = vae.decoder
    cache: dict = {}
    z = torch.zeros(1, vae.config.latent_channels, 1, latent_height, latent_width)
    with torch.no_grad():
        decoder(vae.post_quant_conv(z), cache)
    return [tuple(cache[block][:, 0].shape) for block in decoder_memory_blocks(decoder)]


class DecoderStepWrapper(_ExportModule):
    """One streaming step of the tiny decoder: ``latents`` [1, C, 1, h, w] (raw, i.e. denormalised) and the
    memories ``memory_k`` [1, C_k, H_k, W_k] → ``sample`` [1, 3, 8, 8h, 8w] and the new memories ``memory_k_out``.

    Runs the model's own ``TinyVideoDecoder.forward`` with its streaming cache filled from the inputs (so it is
    never "the first chunk": 8 frames always come out). On the first latent frame pass zero memories, which is what
    the model starts from, and keep only the last output frame.
    """

    def __init__(self, vae):
        super().__init__()
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder
        self.num_memories = len(decoder_memory_blocks(vae.decoder))
        if self.num_memories > MAX_DECODER_MEMORIES:
            raise ValueError(f"at most {MAX_DECODER_MEMORIES} MemBlocks are supported, got {self.num_memories}")

    @property
    def input_names(self) -> list[str]:
        return ["latents", *[f"memory_{k}" for k in range(self.num_memories)]]

    @property
    def output_names(self) -> list[str]:
        return ["sample", *[f"memory_{k}_out" for k in range(self.num_memories)]]

    def forward(self, latents: torch.Tensor, **memories: torch.Tensor):
        blocks = decoder_memory_blocks(self.decoder)
        cache = {block: memories[f"memory_{k}"].unsqueeze(1) for k, block in enumerate(blocks)}
        cache[self.decoder] = True  # not the first chunk: no frames are trimmed in the graph
        video = self.decoder(self.post_quant_conv(latents), cache)
        return (video, *[cache[block][:, 0] for block in blocks])


def _named_forward(cls_name: str, base, names: Sequence[str]):
    """A subclass of ``base`` whose ``forward`` has exactly the keyword parameters ``names`` (``torch.onnx``
    gets the example inputs as keywords and names the graph inputs after them)."""
    args = ", ".join(names)
    source = (
        f"def forward(self, {args}):\n"
        f"    return {base.__name__}.forward(self, {names[0]}, " + ", ".join(f"{n}={n}" for n in names[1:]) + ")\n"
    )
    namespace: dict = {base.__name__: base}
    exec(source, namespace)  # noqa: S102 - a fixed template over validated identifiers
    return type(cls_name, (base,), {"forward": namespace["forward"]})


def decoder_step_wrapper(vae) -> DecoderStepWrapper:
    """:class:`DecoderStepWrapper` with an explicit ``forward(latents, memory_0, ..., memory_{n-1})`` signature."""
    count = len(decoder_memory_blocks(vae.decoder))
    names = ["latents", *[f"memory_{k}" for k in range(count)]]
    if not all(n.isidentifier() for n in names):
        raise ValueError(names)
    return _named_forward("DecoderStep", DecoderStepWrapper, names)(vae)


# ------------------------------------------------------------------------------------------ full causal decoder


def is_causal_decoder(decoder) -> bool:
    """Whether ``decoder`` is the full causal decoder of a ``CausalVideoVAE`` (exported by
    :class:`CausalDecoderStepWrapper`)."""
    return isinstance(decoder, CausalVideoDecoder)


def causal_decoder_convs(decoder) -> list[CausalConv3d]:
    """The causal convs of ``decoder`` that carry frames from one chunk to the next (``kernel_t > 1``), in module
    order: the order of the ``cache_k`` inputs and outputs."""
    return [m for m in decoder.modules() if isinstance(m, CausalConv3d) and m.time_pad > 0]


def causal_decoder_cache_shapes(vae, latent_height: int, latent_width: int) -> list[tuple[int, ...]]:
    """Shapes [1, C, kernel_t - 1, H + 2p, W + 2p] of every conv cache after one latent frame (found by a dry run;
    the same after every later frame, as all the decoder's convs have temporal stride 1)."""
    cache: dict = {}
    z = torch.zeros(1, vae.config.latent_channels, 1, latent_height, latent_width)
    with torch.no_grad():
        vae.decoder(vae.post_quant_conv(z), cache)
    return [tuple(cache[conv].shape) for conv in causal_decoder_convs(vae.decoder)]


class CausalDecoderStepWrapper(_ExportModule):
    """One streaming step of ``CausalVideoDecoder``: ``latents`` [1, C, 1, h, w] (raw, i.e. denormalised) and the
    conv caches ``cache_k`` → ``sample`` and the new caches ``cache_k_out``.

    Runs the model's own ``forward`` with its chunk ``cache`` dict filled from the inputs, exactly as the model's
    ``iter_decode(z, 1)`` carries it between chunks. ``first=True`` is latent frame 0 (no cache inputs, the model's
    zero front padding, 1 output frame); otherwise every later frame (8 output frames for a temporal factor of 8).
    """

    def __init__(self, vae, first: bool = False):
        super().__init__()
        if not is_causal_decoder(vae.decoder):
            raise ValueError(f"CausalDecoderStepWrapper needs a CausalVideoDecoder, got {type(vae.decoder).__name__}")
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder
        self.first = first
        self.convs = causal_decoder_convs(vae.decoder)
        self.upsamplers = [m for m in vae.decoder.modules() if isinstance(m, CausalTemporalUpsample2x)]
        if self.post_quant_conv.time_pad:
            raise ValueError("the post_quant_conv of a CausalVideoVAE must be 1x1x1 (the model's chunked decode does "
                             f"not carry its frames), got kernel_t={self.post_quant_conv.kernel_t}")

    @property
    def input_names(self) -> list[str]:
        return ["latents", *([] if self.first else [f"cache_{k}" for k in range(len(self.convs))])]

    @property
    def output_names(self) -> list[str]:
        return ["sample", *[f"cache_{k}_out" for k in range(len(self.convs))]]

    def forward(self, latents: torch.Tensor, **caches: torch.Tensor):
        cache: dict = {}
        if not self.first:
            cache.update({conv: caches[f"cache_{k}"] for k, conv in enumerate(self.convs)})
            cache.update({up: True for up in self.upsamplers})  # the first frame has been emitted: nothing dropped
        video = self.decoder(self.post_quant_conv(latents), cache)
        return (video, *[cache[conv] for conv in self.convs])


def causal_decoder_step_wrapper(vae, first: bool = False) -> CausalDecoderStepWrapper:
    """:class:`CausalDecoderStepWrapper` with an explicit ``forward(latents[, cache_0, ..., cache_{n-1}])``."""
    count = 0 if first else len(causal_decoder_convs(vae.decoder))
    names = ["latents", *[f"cache_{k}" for k in range(count)]]
    return _named_forward("CausalDecoderFirstStep" if first else "CausalDecoderStep", CausalDecoderStepWrapper,
                          names)(vae, first=first)


# ------------------------------------------------------------------------------------------------ other parts


class VaeEncoderWrapper(_ExportModule):
    """First frame: ``sample`` [1, 3, 1, H, W] in [-1, 1] → ``moments`` [1, 2C, 1, h, w] (mean and log-variance of
    the raw latent; the host samples and normalises, as the pipeline does)."""

    def __init__(self, vae):
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(sample))


class SuperResolutionWrapper(_ExportModule):
    """QuickSRNet on one frame: ``sample`` [1, 3, H, W] → [1, 3, 2H, 2W]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.model(sample)


class UNetWrapper(_ExportModule):
    """SDXL UNet with plain inputs: ``sample``, ``timestep`` [1], ``encoder_hidden_states``, ``text_embeds``,
    ``time_ids`` → ``out_sample`` (the noise / v prediction)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]


class ImageVaeDecoderWrapper(_ExportModule):
    """SDXL ``AutoencoderKL.decode``: ``latent_sample`` (already divided by the scaling factor) → ``sample``."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]
