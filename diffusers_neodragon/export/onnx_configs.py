"""optimum ``OnnxConfig`` subclasses for Neodragon's components (static shapes, plain tensor inputs).

Importing this module imports optimum's exporter (through :mod:`.optimum_compat`). Each class describes one kind
of graph of :mod:`.specs`: input names in graph order (no dynamic axes: NPU graphs are static), output names,
the validation tolerance, and dummy inputs, which are the spec's example tensors (optimum's generators know
nothing of pyramid layouts or decoder memories). :func:`onnx_config_for` builds the config of a spec.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .optimum_compat import import_optimum_exporter
from .specs import ComponentSpec


_onnx = import_optimum_exporter()
from optimum.exporters.onnx.model_patcher import ModelPatcher  # noqa: E402  (after the compat import)
from optimum.utils import NormalizedConfig  # noqa: E402


DEFAULT_OPSET = 17


class NeodragonModelPatcher(ModelPatcher):
    """optimum's patcher limited to its op-level patches (``tril``, ``rms_norm``, traceable SDPA, ...) and output
    naming. The base class also swaps transformers' mask builders for versions written against transformers
    4.53-4.57 (``sdpa_mask_without_vmap`` etc.), whose signatures no longer match transformers 5 (T5 then fails
    with ``missing ... 'cache_position'``); transformers 5's own mask builders trace fine, so they are left alone."""

    def __enter__(self):
        self.patch_ops()
        setattr(self._model, self.orig_forward_name, self.patched_forward)

    def __exit__(self, exc_type, exc_value, traceback):
        self.restore_ops()
        setattr(self._model, self.orig_forward_name, self.orig_forward)


class NeodragonOnnxConfig(_onnx.OnnxConfig):
    """Base: a static-shape graph whose inputs are ``spec.inputs`` and whose outputs are ``spec.output_names``."""

    NORMALIZED_CONFIG_CLASS = NormalizedConfig
    DEFAULT_ONNX_OPSET = DEFAULT_OPSET
    ATOL_FOR_VALIDATION = 1e-4
    KIND = None
    _MODEL_PATCHER = NeodragonModelPatcher

    def __init__(self, spec: ComponentSpec, task: str = "feature-extraction"):
        if self.KIND is not None and spec.kind != self.KIND:
            raise ValueError(f"{type(self).__name__} exports {self.KIND!r} graphs, got a {spec.kind!r} spec")
        self.spec = spec
        super().__init__(spec.module.config, task=task)

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        return OrderedDict((name, {}) for name in self.spec.inputs)

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        return OrderedDict((name, {}) for name in self.spec.output_names)

    def generate_dummy_inputs(self, framework: str = "pt", **input_shapes):
        if framework == "np":
            return {k: v.numpy() for k, v in self.spec.inputs.items()}
        return dict(self.spec.inputs)

    def generate_dummy_inputs_for_validation(self, reference_model_inputs, onnx_input_names=None):
        return {k: (v if isinstance(v, np.ndarray) else v) for k, v in reference_model_inputs.items()}


class TextEncoderOnnxConfig(NeodragonOnnxConfig):
    """DT5 + ContextAdapter: ``input_ids``, ``attention_mask`` (int32) → ``text_embeds``."""

    KIND = "text_encoder"


class PooledTextOnnxConfig(NeodragonOnnxConfig):
    """CLIP-L / CLIP-G ids (int32) → ``pooled_projections``."""

    KIND = "pooled_text"


class TransformerStageOnnxConfig(NeodragonOnnxConfig):
    """One pyramid stage of the MMDiT: noisy clip, padded history slots, text, pooled, timestep, additive attention
    bias and RoPE tables → velocity ``sample``."""

    KIND = "transformer_stage"
    ATOL_FOR_VALIDATION = 1e-3


class DecoderStepOnnxConfig(NeodragonOnnxConfig):
    """Streaming tiny-decoder step: one latent frame + MemBlock memories → 8 frames + new memories."""

    KIND = "decoder_step"


class VaeEncoderOnnxConfig(NeodragonOnnxConfig):
    """Causal VAE encoder on the first frame → ``moments``."""

    KIND = "vae_encoder"
    ATOL_FOR_VALIDATION = 1e-3


class SuperResolutionOnnxConfig(NeodragonOnnxConfig):
    """QuickSRNet on one frame."""

    KIND = "super_resolution"


class T2ITextEncoderOnnxConfig(NeodragonOnnxConfig):
    """First-frame (SDXL / SSD-1B) CLIP text encoder → penultimate hidden states and pooled embedding."""

    KIND = "t2i_text_encoder"


class T2IUNetOnnxConfig(NeodragonOnnxConfig):
    """First-frame (SDXL / SSD-1B) UNet with its added text/time conditioning as plain inputs."""

    KIND = "t2i_unet"
    ATOL_FOR_VALIDATION = 1e-3


class T2IVaeDecoderOnnxConfig(NeodragonOnnxConfig):
    """First-frame (SDXL / SSD-1B) VAE decoder."""

    KIND = "t2i_vae_decoder"
    ATOL_FOR_VALIDATION = 1e-3


ONNX_CONFIGS: dict[str, type[NeodragonOnnxConfig]] = {
    cls.KIND: cls
    for cls in (
        TextEncoderOnnxConfig, PooledTextOnnxConfig, TransformerStageOnnxConfig, DecoderStepOnnxConfig,
        VaeEncoderOnnxConfig, SuperResolutionOnnxConfig, T2ITextEncoderOnnxConfig, T2IUNetOnnxConfig,
        T2IVaeDecoderOnnxConfig,
    )
}


def onnx_config_for(spec: ComponentSpec) -> NeodragonOnnxConfig:
    if spec.kind not in ONNX_CONFIGS:
        raise ValueError(f"no OnnxConfig for component kind {spec.kind!r}; known: {sorted(ONNX_CONFIGS)}")
    return ONNX_CONFIGS[spec.kind](spec)
