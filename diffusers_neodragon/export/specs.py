"""What gets exported: one :class:`ComponentSpec` per ONNX graph, with its wrapper, example inputs and shapes.

:mod:`.exporter` exports each with ``torch.onnx``. Every shape is static: the size of a generation (height,
width, frames) is fixed at export time, as an NPU context binary requires.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import wrappers as W


@dataclass
class ComponentSpec:
    """One graph to export.

    Attributes:
        name: file stem and manifest key (``transformer_stage_2``, ``decoder_step``, ...).
        kind: what it is (``text_encoder``, ``pooled_text``, ``transformer_stage``, ``decoder_step`` (also the full
            causal decoder's ``decoder_first_step``), ``vae_encoder``,
            ``super_resolution``, ``t2i_text_encoder``, ``t2i_unet``, ``t2i_vae_decoder``); picks the OnnxConfig class.
        module: the wrapper to trace.
        inputs: example inputs in graph order (their shapes and dtypes are the graph's).
        output_names: graph output names, in the wrapper's output order.
        metadata: anything the runtime needs to drive the graph (layouts, memory shapes, constants).
    """

    name: str
    kind: str
    module: nn.Module
    inputs: OrderedDict[str, torch.Tensor]
    output_names: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def input_shapes(self) -> dict[str, list[int]]:
        return {k: list(v.shape) for k, v in self.inputs.items()}

    def input_dtypes(self) -> dict[str, str]:
        return {k: str(v.dtype).replace("torch.", "") for k, v in self.inputs.items()}


@dataclass
class ExportSize:
    """The generation size the graphs are built for (video before super-resolution)."""

    height: int = 320
    width: int = 512
    num_frames: int = 49
    max_sequence_length: int = 128

    def latent(self, vae_spatial: int = 8, vae_temporal: int = 8):
        if (self.num_frames - 1) % vae_temporal:
            raise ValueError(f"num_frames must be {vae_temporal}k+1, got {self.num_frames}")
        return (self.num_frames - 1) // vae_temporal + 1, self.height // vae_spatial, self.width // vae_spatial


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _ids(length: int, vocab: int, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, max(vocab, 2), (1, length), generator=generator, dtype=torch.int32)


def text_encoder_spec(text_encoder, context_adapter, size: ExportSize) -> ComponentSpec:
    length = size.max_sequence_length
    mask = torch.zeros(1, length, dtype=torch.int32)
    mask[:, : max(1, length // 4)] = 1
    module = W.TextEncoderWrapper(text_encoder, context_adapter).eval()
    return ComponentSpec(
        "text_encoder", "text_encoder", module,
        OrderedDict(input_ids=_ids(length, text_encoder.config.vocab_size), attention_mask=mask),
        ["text_embeds"], {"max_sequence_length": length},
    )


def pooled_text_spec(text_encoder, text_encoder_2, tokenizer=None, tokenizer_2=None) -> ComponentSpec:
    inputs = OrderedDict()
    lengths = {}
    for key, encoder, tok in (("input_ids", text_encoder, tokenizer), ("input_ids_2", text_encoder_2, tokenizer_2)):
        if encoder is not None:
            length = tok.model_max_length if tok is not None else encoder.config.max_position_embeddings
            inputs[key] = _ids(length, encoder.config.vocab_size, seed=len(inputs))
            lengths[key] = length
    module = W.PooledTextWrapper(text_encoder, text_encoder_2).eval()
    return ComponentSpec("pooled_text", "pooled_text", module, inputs, ["pooled_projections"], {"lengths": lengths})


def transformer_stage_specs(
    transformer, num_stages: int, size: ExportSize, mask_value: float = W.DEFAULT_MASK_VALUE,
    vae_spatial: int = 8, vae_temporal: int = 8, stages: list[int] | None = None,
) -> list[ComponentSpec]:
    """One graph per pyramid stage (all, or only the ``stages`` given: the others are not built)."""
    cfg = transformer.config
    frames, lh, lw = size.latent(vae_spatial, vae_temporal)
    width = cfg.attention_head_dim * cfg.num_attention_heads
    text_width = cfg.context_embedder_dim or width
    specs = []
    for stage in range(num_stages) if stages is None else stages:
        layout = W.stage_layout(stage, num_stages, frames, lh, lw, size.max_sequence_length, cfg.patch_size,
                                cfg.in_channels)
        inputs = OrderedDict(hidden_states=_randn(1, cfg.in_channels, 1, layout.noisy_height, layout.noisy_width))
        for slot in layout.slots:
            inputs[slot.name] = _randn(1, cfg.in_channels, slot.frames, slot.height, slot.width, seed=slot.level + 1)
        inputs["encoder_hidden_states"] = _randn(1, size.max_sequence_length, text_width, seed=7)
        inputs["pooled_projections"] = _randn(1, cfg.pooled_projection_dim, seed=8)
        proj_params = W.timestep_projection_params(transformer)
        inputs["timestep_proj"] = W.timestep_projection(torch.tensor([500.0]), proj_params)
        text_mask = torch.zeros(size.max_sequence_length, dtype=torch.bool)
        text_mask[: max(1, size.max_sequence_length // 4)] = True
        valid = {slot.name: slot.frames for slot in layout.slots}
        inputs.update(W.stage_attention_inputs(layout, valid, text_mask, cfg.attention_head_dim, cfg.rope_theta,
                                               mask_value))
        module = W.TransformerStageWrapper(transformer, layout).eval()
        specs.append(ComponentSpec(
            f"transformer_stage_{stage}", "transformer_stage", module, inputs, ["sample"],
            {"layout": layout.to_dict(), "attention_mask_value": mask_value,
             "head_dim": cfg.attention_head_dim, "rope_theta": cfg.rope_theta, "timestep_projection": proj_params},
        ))
    return specs


def decoder_step_spec(vae, size: ExportSize) -> ComponentSpec:
    _, lh, lw = size.latent(vae.config.spatial_downsample_scale, vae.config.temporal_downsample_scale)
    shapes = W.decoder_memory_shapes(vae, lh, lw)
    module = W.decoder_step_wrapper(vae).eval()
    inputs = OrderedDict(latents=_randn(1, vae.config.latent_channels, 1, lh, lw))
    for k, shape in enumerate(shapes):
        inputs[f"memory_{k}"] = _randn(*shape, seed=k + 1).relu()
    return ComponentSpec(
        "decoder_step", "decoder_step", module, inputs, module.output_names,
        {"memory_shapes": [list(s) for s in shapes], "frames_per_step": vae.config.temporal_downsample_scale,
         "frames_to_trim": vae.decoder.frames_to_trim},
    )


def causal_decoder_specs(vae, size: ExportSize, names: list[str] | None = None) -> list[ComponentSpec]:
    """The full causal decoder as two streaming graphs (all, or only those ``names``): ``decoder_first_step``
    (latent frame 0 → 1 frame + the conv caches) and ``decoder_step`` (a later latent frame + the caches → 8 frames
    + the new caches). The host runs the first once, then the step per latent frame, feeding each step's caches to
    the next."""
    t_scale = vae.config.temporal_downsample_scale
    _, lh, lw = size.latent(vae.config.spatial_downsample_scale, t_scale)
    shapes = W.causal_decoder_cache_shapes(vae, lh, lw)
    latents = _randn(1, vae.config.latent_channels, 1, lh, lw)
    metadata = {"decoder": "causal", "cache_shapes": [list(s) for s in shapes]}
    specs = []
    if names is None or "decoder_first_step" in names:
        module = W.causal_decoder_step_wrapper(vae, first=True).eval()
        specs.append(ComponentSpec("decoder_first_step", "decoder_step", module, OrderedDict(latents=latents),
                                   module.output_names, {**metadata, "frames_per_step": 1}))
    if names is None or "decoder_step" in names:
        module = W.causal_decoder_step_wrapper(vae).eval()
        inputs = OrderedDict(latents=latents)
        for k, shape in enumerate(shapes):
            inputs[f"cache_{k}"] = _randn(*shape, seed=k + 1)
        specs.append(ComponentSpec("decoder_step", "decoder_step", module, inputs, module.output_names,
                                   {**metadata, "frames_per_step": t_scale}))
    return specs


def vae_encoder_spec(vae, size: ExportSize) -> ComponentSpec:
    module = W.VaeEncoderWrapper(vae).eval()
    sample = _randn(1, vae.config.in_channels, 1, size.height, size.width).clamp(-1, 1)
    return ComponentSpec("vae_encoder", "vae_encoder", module, OrderedDict(sample=sample), ["moments"])


def super_resolution_spec(model, size: ExportSize) -> ComponentSpec:
    module = W.SuperResolutionWrapper(model).eval()
    sample = _randn(1, model.config.in_channels, size.height, size.width).clamp(-1, 1)
    return ComponentSpec("super_resolution", "super_resolution", module, OrderedDict(sample=sample), ["sample_out"],
                         {"scale_factor": model.config.scale_factor})


def first_frame_specs(first_frame_pipeline, size: ExportSize, names: list[str] | None = None) -> list[ComponentSpec]:
    """SDXL-style text-to-image parts (SSD-1B in the release), at twice the video size as the pipeline runs it
    (all, or only those ``names``: the others' wrappers are not built)."""
    pipe = first_frame_pipeline

    def wanted(name):
        return names is None or name in names

    height, width = 2 * size.height, 2 * size.width
    scale = pipe.vae_scale_factor
    specs = []
    hidden = []
    for index, (name, encoder, tok) in enumerate((
        ("t2i_text_encoder", pipe.text_encoder, pipe.tokenizer),
        ("t2i_text_encoder_2", pipe.text_encoder_2, pipe.tokenizer_2),
    )):
        if encoder is None:
            continue
        hidden.append(encoder.config.hidden_size)
        if not wanted(name):
            continue
        ids = _ids(tok.model_max_length, encoder.config.vocab_size, seed=index)
        specs.append(ComponentSpec(name, "t2i_text_encoder", W.ClipHiddenWrapper(encoder).eval(),
                                   OrderedDict(input_ids=ids), ["hidden_states", "pooled"],
                                   {"max_length": tok.model_max_length}))
    unet = pipe.unet
    lh, lw = height // scale, width // scale
    length = pipe.tokenizer_2.model_max_length if pipe.tokenizer_2 is not None else pipe.tokenizer.model_max_length
    pooled_dim = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else hidden[0]
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
    if wanted("t2i_unet"):
        specs.append(ComponentSpec(
            "t2i_unet", "t2i_unet", W.UNetWrapper(unet).eval(),
            OrderedDict(sample=_randn(1, unet.config.in_channels, lh, lw), timestep=torch.tensor([999.0]),
                        encoder_hidden_states=_randn(1, length, unet.config.cross_attention_dim, seed=3),
                        text_embeds=_randn(1, pooled_dim, seed=4), time_ids=time_ids),
            ["out_sample"], {"height": height, "width": width},
        ))
    if wanted("t2i_vae_decoder"):
        specs.append(ComponentSpec(
            "t2i_vae_decoder", "t2i_vae_decoder", W.ImageVaeDecoderWrapper(pipe.vae).eval(),
            OrderedDict(latent_sample=_randn(1, pipe.vae.config.latent_channels, lh, lw)), ["sample"],
            {"scaling_factor": pipe.vae.config.scaling_factor},
        ))
    return specs


def pipeline_components(pipe) -> list[tuple[str, str]]:
    """``(name, kind)`` of every graph ``pipe`` (a ``NeodragonPipeline``) has, in export order; builds nothing."""
    names = [("text_encoder", "text_encoder")]
    if pipe.text_encoder is not None or pipe.text_encoder_2 is not None:
        names.append(("pooled_text", "pooled_text"))
    names += [(f"transformer_stage_{stage}", "transformer_stage") for stage in range(pipe.scheduler.config.stages)]
    if pipe.vae is not None and W.is_causal_decoder(pipe.vae.decoder):
        names.append(("decoder_first_step", "decoder_step"))  # latent frame 0 of the full causal decoder
    names += [("decoder_step", "decoder_step"), ("vae_encoder", "vae_encoder")]
    if pipe.super_resolution is not None:
        names.append(("super_resolution", "super_resolution"))
    ff = pipe.first_frame_pipeline
    if ff is not None:
        names += [(name, "t2i_text_encoder") for name, encoder in (
            ("t2i_text_encoder", ff.text_encoder), ("t2i_text_encoder_2", ff.text_encoder_2)) if encoder is not None]
        names += [("t2i_unet", "t2i_unet"), ("t2i_vae_decoder", "t2i_vae_decoder")]
    return names


def unexportable_reason(pipe, kind: str) -> str | None:
    """Why the graphs of ``kind`` cannot be exported from ``pipe``, or ``None`` when they can."""
    if kind == "text_encoder" and pipe.text_encoder_3 is None:
        return "the pipeline has no text_encoder_3"
    if kind == "transformer_stage" and pipe.scheduler.config.stages > W.MAX_HISTORY_SLOTS:
        return f"the stage graphs support at most {W.MAX_HISTORY_SLOTS} pyramid stages, the scheduler has " \
            f"{pipe.scheduler.config.stages}"
    if kind in ("decoder_step", "vae_encoder") and pipe.vae is None:
        return "the pipeline has no vae"
    decoder = pipe.vae.decoder if kind == "decoder_step" else None
    if decoder is not None and not (W.is_streaming_decoder(decoder) or W.is_causal_decoder(decoder)):
        return (
            f"the VAE ({type(pipe.vae).__name__}) has a {type(decoder).__name__}, which does not export as a "
            "one-latent-frame step; only the tiny streaming decoder (AsymmetricVAE) and the full causal decoder "
            "(CausalVideoVAE) do: distil a tiny decoder from this VAE with training/distill_decoder.py --teacher "
            "PIPELINE --pipeline_output NEW_PIPELINE and export NEW_PIPELINE, or leave decoder_step out (--components)"
        )
    if kind == "vae_encoder" and not (hasattr(pipe.vae, "encoder") and hasattr(pipe.vae, "quant_conv")):
        return f"the VAE ({type(pipe.vae).__name__}) has no causal encoder + quant_conv"
    return None


def _requested(pipe, components: list[str] | None) -> list[tuple[str, str]]:
    available = pipeline_components(pipe)
    if components is None:
        return available
    if not components:
        raise ValueError("components is empty: name at least one graph, or pass None for all")
    valid = [name for name, _ in available]
    kinds = list(dict.fromkeys(kind for _, kind in available))
    unknown = [c for c in dict.fromkeys(components) if c not in valid and c not in kinds]
    if unknown:
        raise ValueError(f"unknown components {unknown}; valid names for this pipeline: {valid} (or kinds: {kinds})")
    return [(name, kind) for name, kind in available if name in components or kind in components]


def skipped_components(pipe, components: list[str] | None = None) -> dict[str, str]:
    """``{name: reason}`` of the graphs a full export (``components=None``) leaves out because they cannot be
    exported; empty when ``components`` names graphs (an unexportable one named is an error instead)."""
    if components is not None:
        return {}
    return {name: reason for name, kind in pipeline_components(pipe) if (reason := unexportable_reason(pipe, kind))}


def select_components(pipe, components: list[str] | None = None) -> list[tuple[str, str]]:
    """The ``(name, kind)`` of the graphs to export, checked before anything is built.

    ``components=None``: every exportable graph (those that are not are left out, see :func:`skipped_components`,
    and the exporter records why in the manifest); a ``ValueError`` only when none is exportable.
    ``components`` (names or kinds): exactly those; one ``ValueError`` names every unknown name (with the valid
    ones), or every named graph that cannot be exported and why.
    """
    requested = _requested(pipe, components)
    reasons = {name: reason for name, kind in requested if (reason := unexportable_reason(pipe, kind))}
    exportable = [(name, kind) for name, kind in requested if name not in reasons]
    if reasons and (components is not None or not exportable):
        problems = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
        others = [name for name, _ in exportable] if components is not None else []
        hint = f"; to export the others, name them (--components / components=): {' '.join(others)}" \
            if others else ""
        raise ValueError(f"cannot export {problems}{hint}")
    return exportable


def pipeline_specs(pipe, size: ExportSize, components: list[str] | None = None,
                   mask_value: float = W.DEFAULT_MASK_VALUE) -> list[ComponentSpec]:
    """Specs for the exportable components of a ``NeodragonPipeline`` (all, or only those named).

    The selection is checked first (:func:`select_components`), and only the selected graphs' wrappers and example
    inputs are built.
    """
    selected = select_components(pipe, components)
    names = [name for name, _ in selected]
    kinds = {kind for _, kind in selected}
    vae_s, vae_t = pipe.vae_spatial_scale, pipe.vae_temporal_scale
    specs = []
    if "text_encoder" in kinds:
        specs.append(text_encoder_spec(pipe.text_encoder_3, pipe.context_adapter, size))
    if "pooled_text" in kinds:
        specs.append(pooled_text_spec(pipe.text_encoder, pipe.text_encoder_2, pipe.tokenizer, pipe.tokenizer_2))
    if "transformer_stage" in kinds:
        stages = [int(name.rsplit("_", 1)[1]) for name, kind in selected if kind == "transformer_stage"]
        specs += transformer_stage_specs(pipe.transformer, pipe.scheduler.config.stages, size, mask_value, vae_s,
                                         vae_t, stages=stages)
    if "decoder_step" in kinds:
        if W.is_causal_decoder(pipe.vae.decoder):
            specs += causal_decoder_specs(pipe.vae, size, names)
        else:
            specs.append(decoder_step_spec(pipe.vae, size))
    if "vae_encoder" in kinds:
        specs.append(vae_encoder_spec(pipe.vae, size))
    if "super_resolution" in kinds:
        specs.append(super_resolution_spec(pipe.super_resolution, size))
    if kinds & {"t2i_text_encoder", "t2i_unet", "t2i_vae_decoder"}:
        specs += first_frame_specs(pipe.first_frame_pipeline, size, names)
    if [spec.name for spec in specs] != names:
        raise AssertionError(f"built {[spec.name for spec in specs]}, selected {names}")
    return specs
