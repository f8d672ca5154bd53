"""Where NeodragonPipeline's weights live and how its models run fast: device moves that include the nested
first-frame pipeline, diffusers' offloading, float8 weights, torch.compile and CUDA graphs (which offloading must
turn off)."""

from collections.abc import Callable, Iterable

import torch
from diffusers.utils import logging

from ...utils.cuda_graphs import enable_module_cuda_graphs, module_cuda_graph_runner
from ...utils.float8_weights import quantize_weights_float8
from ...utils.shared_weights import bytes_held


logger = logging.get_logger(__name__)

COMPILABLE_PARTS = ("transformer", "first_frame_denoiser", "first_frame_vae_decoder", "vae_encoder")


def _has_offload_hooks(model: torch.nn.Module) -> bool:
    """Whether accelerate's offload/device-map hooks or diffusers' group offloading move this model's weights."""
    return hasattr(model, "_hf_hook") or any(
        getattr(module, "_diffusers_hook", None) is not None
        and module._diffusers_hook.get_hook("group_offloading") is not None
        for module in model.modules()
    )


class NeodragonAccelerationMixin:
    """Devices, offloading, float8 weights and CUDA graphs of [`NeodragonPipeline`]."""

    def to(self, *args, **kwargs):
        """Also moves the nested first-frame pipeline (diffusers only moves ``nn.Module`` components). Captured
        CUDA graphs notice that the weights moved and are captured again."""
        super().to(*args, **kwargs)
        if self.first_frame_pipeline is not None:
            self.first_frame_pipeline.to(*args, **kwargs)
        return self

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str = None):
        """diffusers' model offload, also for the first-frame pipeline; turns CUDA graphs off (weights move)."""
        self._disable_cuda_graphs_for_offload()
        super().enable_model_cpu_offload(gpu_id=gpu_id, device=device)
        if self.first_frame_pipeline is not None:
            self.first_frame_pipeline.enable_model_cpu_offload(gpu_id=gpu_id, device=device)

    def remove_all_hooks(self):
        """Removes the offload hooks of the components and of the first-frame pipeline."""
        super().remove_all_hooks()
        if self.first_frame_pipeline is not None:
            self.first_frame_pipeline.remove_all_hooks()

    def enable_sequential_cpu_offload(self, *args, **kwargs):
        """diffusers' sequential offload; turns CUDA graphs off (weights move)."""
        self._disable_cuda_graphs_for_offload()
        super().enable_sequential_cpu_offload(*args, **kwargs)

    def enable_group_offload(self, onload_device: torch.device, *args, **kwargs):
        """diffusers' group offload, also for the first-frame pipeline; turns CUDA graphs off (weights move).

        With ``offload_type="leaf_level", use_stream=True`` the next layer's weights are copied while the current
        one computes, so a card that cannot hold every model at once runs far faster than with
        [`enable_model_cpu_offload`], which moves a whole model before it starts."""
        self._disable_cuda_graphs_for_offload()
        super().enable_group_offload(onload_device, *args, **kwargs)
        if self.first_frame_pipeline is not None:
            self.first_frame_pipeline.enable_group_offload(onload_device, *args, **kwargs)

    def enable_float8_weights(self, min_numel: int = 65536, float8_matmuls: bool = False) -> int:
        """Store the weights of the transformer, the CLIP text encoders, ContextAdapter and the first-frame UNet and
        text encoders in float8 (one scale per output channel), halving them; the VAEs, super-resolution and the
        T5 encoder (small, and its feed-forward reads its weight's dtype at every call) stay as they are. Each layer
        dequantizes its weight when called, so the outputs change by the float8 rounding of the weights (at most
        2^-4 of each). Inference only and not undone by anything but reloading; CUDA graphs, when on, are captured
        again. Returns the bytes saved. See :mod:`diffusers_neodragon.utils.float8_weights`.

        ``float8_matmuls=True`` also makes the transformer's linear layers multiply in float8 (each token of their
        input scaled to e4m3 at every call) when it runs in bfloat16, on GPUs with float8 tensor cores (compute
        capability 8.9 and up): faster than bfloat16 only where the matrices are large (on an H100, 6 % faster per DiT
        call at 640x1024, 5 % slower at 320x512), and the outputs move further (the README gives the figures)."""
        graphed = self.transformer._cuda_graphs is not None
        if graphed:
            self.enable_cuda_graphs(False)
        models = {"transformer": self.transformer, **self._graphable_models()}
        models.pop("text_encoder_3", None)
        held = bytes_held(*models.values())
        for model in models.values():
            quantize_weights_float8(model, min_numel=min_numel, float8_matmul=float8_matmuls and
                                    model is self.transformer)
        self._share_first_frame_weights()  # each model quantised its own copy of a shared weight: one again
        saved = held - bytes_held(*models.values())
        if graphed:
            self.enable_cuda_graphs()
        return saved

    def fuse_qkv_projections(self, transformer: bool = True, first_frame: bool = False):
        """One matrix multiply for the query, key and value projections of each attention (diffusers' name): of the
        transformer ([`NeodragonTransformer3DModel.fuse_qkv_projections`], no weight held twice) and, with
        ``first_frame``, of the first-frame pipeline's denoiser: a nested pipeline's transformer, or an SDXL UNet
        through diffusers, which keeps the separate projections as well (at full size 0.53 GiB more, for 0.4 ms
        per UNet step on an H100). Call it before float8 weights; CUDA graphs, when on, are captured again. Outputs
        change only by rounding; [`unfuse_qkv_projections`] undoes it."""
        self._fuse_or_unfuse(True, transformer, first_frame)
        return self

    def unfuse_qkv_projections(self, transformer: bool = True, first_frame: bool = True):
        """Undo [`fuse_qkv_projections`]."""
        self._fuse_or_unfuse(False, transformer, first_frame)
        return self

    def _fuse_or_unfuse(self, fuse: bool, transformer: bool, first_frame: bool):
        graphed = self.transformer._cuda_graphs is not None
        if graphed:  # the graphs read the weights where they were captured
            self.enable_cuda_graphs(False)
        try:
            models = [self.transformer] if transformer else []
            nested = self.first_frame_pipeline if first_frame else None
            if hasattr(nested, "transformer"):
                models.append(nested.transformer)
            for model in dict.fromkeys(models):  # a nested pipeline may share the transformer
                (model.fuse_qkv_projections if fuse else model.unfuse_qkv_projections)()
            if nested is not None and not hasattr(nested, "transformer"):  # after ours, which refuse float8 weights
                if fuse:
                    nested.fuse_qkv_projections(unet=True, vae=False)
                elif getattr(nested, "fusing_unet", False):  # diffusers warns when there is nothing to undo
                    nested.unfuse_qkv_projections(unet=True, vae=False)
        finally:
            if graphed:
                self.enable_cuda_graphs()

    def enable_torch_compile(self, parts: Iterable[str] = COMPILABLE_PARTS, **compile_kwargs):
        """``torch.compile`` the models that gain from it on a GPU; CUDA graphs, when on, are captured again around
        the compiled code. Call it once, before the first generation (compiling takes a minute or two per part).

        ``parts`` (all by default; a missing model is skipped):
            - ``"transformer"``: one block compiled and reused for every block
              (``compile_repeated_blocks(dynamic=True)``: token counts change with the stage and the history).
            - ``"first_frame_denoiser"``: the first-frame UNet, channels-last with its ``forward`` compiled, or a
              nested first-frame NeodragonPipeline's own transformer as above.
            - ``"first_frame_vae_decoder"``: the first-frame VAE's decoder, channels-last and compiled: at 640x1024
              it is the largest convolution work of a hybrid generation, and eager convolutions in channels-last
              are slower, so the two go together.
            - ``"vae_encoder"``: the video VAE's encoder (the first frame's or the image's encoding).

        ``compile_kwargs`` go to ``torch.compile`` (e.g. ``mode=``). Compiled kernels round differently from
        eager ones, so outputs move slightly (the README gives the measured differences per part).
        """
        parts = list(parts)
        unknown = sorted(set(parts) - set(COMPILABLE_PARTS))
        if unknown:
            raise ValueError(f"Unknown parts {unknown}; choose from {list(COMPILABLE_PARTS)}")
        graphed = self.transformer._cuda_graphs is not None
        if graphed:  # the graph runners wrap `forward`: compile under them, then capture again
            self.enable_cuda_graphs(False)
        first_frame = self.first_frame_pipeline
        if "transformer" in parts:
            _compile_blocks(self.transformer, compile_kwargs)
        if "first_frame_denoiser" in parts:
            nested = getattr(first_frame, "transformer", None)
            if isinstance(nested, torch.nn.Module) and nested is not self.transformer:
                _compile_blocks(nested, compile_kwargs)
            _compile_forward(getattr(first_frame, "unet", None), compile_kwargs, channels_last=True)
        if "first_frame_vae_decoder" in parts and not hasattr(first_frame, "transformer"):
            vae = getattr(first_frame, "vae", None)  # a nested NeodragonPipeline's VAE is ours: not 2D
            _compile_forward(getattr(vae, "decoder", None), compile_kwargs, channels_last=True)
        if "vae_encoder" in parts:
            _compile_forward(self.vae.encoder, compile_kwargs)
        if graphed:
            self.enable_cuda_graphs()
        return self

    def _disable_cuda_graphs_for_offload(self):
        graphed = self.transformer._cuda_graphs is not None or any(
            module_cuda_graph_runner(model) is not None
            for model in [*self._graphable_models().values(), *(p for p, _, _ in self._graphable_vae_parts().values())]
        )
        if graphed:
            logger.info("CPU offload moves the weights that CUDA graphs replay from: turning CUDA graphs off")
            self.enable_cuda_graphs(False)

    def _graphable_models(self) -> dict[str, torch.nn.Module]:
        """The models replayed from CUDA graphs beside the transformer, each once (a shared encoder appears once):
        the text encoders and ContextAdapter, and the first-frame pipeline's text encoders and UNet."""
        models = {name: getattr(self, name, None) for name in ("text_encoder", "text_encoder_2", "text_encoder_3",
                                                               "context_adapter")}
        if self.first_frame_pipeline is not None:
            for name in ("text_encoder", "text_encoder_2", "unet"):
                models[f"first_frame_pipeline.{name}"] = getattr(self.first_frame_pipeline, name, None)
        unique, seen = {}, set()
        for name, model in models.items():
            if isinstance(model, torch.nn.Module) and id(model) not in seen:
                unique[name] = model
                seen.add(id(model))
        return unique

    def _graphable_vae_parts(self) -> dict[str, tuple[torch.nn.Module, torch.nn.Module, Callable | None]]:
        """name -> (part, the VAE that holds it, predicate of its calls that must run eagerly): the video VAE's
        encoder, whose calls with a causal ``cache`` update it and stay eager, and the first-frame pipeline's image
        VAE decoder (not a nested NeodragonPipeline's video VAE, which decodes with a causal state)."""
        parts = {}
        encoder = getattr(self.vae, "encoder", None)
        if isinstance(encoder, torch.nn.Module):
            parts["vae.encoder"] = (encoder, self.vae, _updates_a_cache)
        first_frame = self.first_frame_pipeline
        vae = getattr(first_frame, "vae", None)
        if not hasattr(first_frame, "transformer") and isinstance(getattr(vae, "decoder", None), torch.nn.Module):
            parts["first_frame_pipeline.vae.decoder"] = (vae.decoder, vae, None)
        return parts

    def enable_cuda_graphs(self, enabled: bool = True):
        """Replay the transformer, the text encoders, the first-frame UNet and the VAE parts that run at batch 1
        (the video VAE's encoder, the first-frame VAE's decoder) from CUDA graphs (CUDA only).

        At batch 1 these models are bound by kernel-launch overhead: a DiT call issues about 2000 small kernels on
        144-1728 tokens, the text encoders over 1000 kernels for 4 ms of GPU work, a first-frame UNet step 1400,
        and the CPU launching them is slower than the GPU running them. Replaying a captured graph launches all of
        them at once; the video VAE's encoding of a first frame issues 270 kernels for 8 ms of GPU work, and took
        20-57 ms from the CPU on one H100 host. The transformer (and a nested first-frame NeodragonPipeline's) uses
        [`NeodragonTransformer3DModel.enable_cuda_graphs`]; every other model (``text_encoder``, ``text_encoder_2``,
        ``text_encoder_3``, ``context_adapter`` and the first-frame pipeline's ``text_encoder``, ``text_encoder_2``
        and ``unet``, where present) and ``vae.encoder`` and ``first_frame_pipeline.vae.decoder`` get their
        ``forward`` wrapped by a [`~diffusers_neodragon.utils.cuda_graphs.CUDAGraphRunner`] (the encoder's chunked
        calls, which carry a causal cache, run eagerly). ``enabled=False`` removes them all and restores the
        original ``forward`` methods.

        Caveats:
            - Static shapes: every distinct input shape (resolution, batch, CFG on/off, history length) is run
              eagerly once, captured on its second call and replayed from then on; each captured shape keeps
              its static buffers and its output in one memory pool (shared by all these models, which never run
              at once), so GPU memory grows with the number of shapes used. A model whose capture fails (a host
              synchronisation inside it) runs eagerly for that shape.
            - Replayed outputs live in static buffers that the next replay overwrites, so every model returns
              copies (one output-sized copy per call).
            - Inference only: with autograd on, CPU tensors, or while another capture is running, calls run
              eagerly. Weights are read where they were at capture: when they move (``to()`` of the pipeline or
              of a model) the graphs are dropped and recaptured, CPU offload turns them off, and enabling
              them while offload hooks are installed raises.
        """
        models = self._graphable_models()
        vae_parts = self._graphable_vae_parts()
        # A nested NeodragonPipeline (a distilled student's multi-step first frame) replays its own transformer.
        nested = getattr(self.first_frame_pipeline, "transformer", None)
        transformers = {"transformer": self.transformer}
        if hasattr(nested, "enable_cuda_graphs") and nested is not self.transformer:
            transformers["first_frame_pipeline.transformer"] = nested
        if enabled:
            holders = {**transformers, **models, **{name: vae for name, (_, vae, _) in vae_parts.items()}}
            hooked = [name for name, model in holders.items() if _has_offload_hooks(model)]
            if hooked:
                raise ValueError(
                    f"CUDA graphs replay fixed weight addresses, but {hooked} have offload/device-map hooks that "
                    "move their weights; call `remove_all_hooks()` and move the pipeline to the GPU first"
                )
        for transformer in transformers.values():
            transformer.enable_cuda_graphs(enabled)
        # One memory pool for all: they never run at once and all return copies of their outputs.
        pool = self.transformer._cuda_graphs.graph_pool if enabled else None
        for model in models.values():
            enable_module_cuda_graphs(model, enabled, clone_outputs=True, pool=pool, weights=model)
        for part, _, eager_when in vae_parts.values():
            enable_module_cuda_graphs(part, enabled, clone_outputs=True, pool=pool, weights=part,
                                      eager_when=eager_when)
        return self


def _updates_a_cache(x, cache=None) -> bool:
    """Whether a causal encoder call carries a cache (which it updates in place: not replayable)."""
    return cache is not None


def _compile_blocks(transformer: torch.nn.Module, compile_kwargs: dict):
    """``compile_repeated_blocks`` once: a block compiled before keeps it as it is."""
    if all(getattr(module, "_compiled_call_impl", None) is None for module in transformer.modules()):
        transformer.compile_repeated_blocks(dynamic=True, **compile_kwargs)


def _compile_forward(module: torch.nn.Module | None, compile_kwargs: dict, channels_last: bool = False):
    """Compile ``module.forward`` in place (an instance attribute, so a CUDA-graph runner installed later wraps
    the compiled code); an already compiled ``forward`` is left as it is."""
    if module is None or hasattr(module.__dict__.get("forward"), "_torchdynamo_orig_callable"):
        return
    if channels_last:
        module.to(memory_format=torch.channels_last)
    module.forward = torch.compile(module.forward, **compile_kwargs)
