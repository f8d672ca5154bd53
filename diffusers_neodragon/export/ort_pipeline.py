"""Run a whole Neodragon generation from an export folder with ONNX Runtime.

The graphs do the networks; the host does what the torch pipeline does around them, with the same code: the
per-latent-frame pyramid sampling is the torch pipeline's own ``sample_latent_frame``, whose transformer calls
:class:`ORTStageTransformer` answers with the stage graphs (``PyramidalDMDScheduler`` does noise, renoising, Euler
steps and the history pyramid; diffusers' ``LCMScheduler`` and image/video processors the first frame). Random
numbers are drawn from the torch ``generator`` in the same order as ``NeodragonPipeline``, so with the same seed (or
``latents``) the result matches the torch pipeline up to floating-point error (see ``tests/export``).

Every graph runs at batch 1: classifier-free guidance runs the stage graph once per row of the loop's batch
(negative, then positive text). One prompt and one video per call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from ..data.vocab_tokenizer import prompt_normalizer
from ..pipelines.neodragon.mode_defaults import FIRST_FRAME_DEFAULTS, MODE_DEFAULTS, first_given
from ..pipelines.neodragon.pyramid_sampling import sample_latent_frame
from ..schedulers.scheduling_pyramidal_dmd import PyramidalDMDScheduler
from .exporter import read_manifest
from .wrappers import StageLayout, pack_history, stage_attention_inputs, timestep_projection


def torch_vae_decoder(vae) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``decoder=`` of :class:`ORTNeodragonPipeline` from a torch VAE, for an export without a decoder graph:
    normalised latents -> video in [-1, 1], on the VAE's device and dtype."""

    def decode(latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            raw = vae.denormalize_latents(latents.to(device=vae.device, dtype=vae.dtype))
            return vae.decode(raw).sample.float().cpu()

    return decode


def cpu_session_factory(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def htp_session_factory(precision: str = "fp16"):
    """Sessions on the QNN HTP backend (simulator on x86) with CPU fallback disabled."""
    from .htp_check import htp_session_options

    def factory(path: str):
        import onnxruntime as ort

        return ort.InferenceSession(path, htp_session_options(precision))

    return factory


class ORTStageTransformer:
    """The transformer call of ``sample_latent_frame``, answered by the exported stage graphs.

    The stage is the one whose noisy-clip size matches ``hidden_states``; each batch row (the negative and positive
    halves of classifier-free guidance) runs the batch-1 graph on its own.
    """

    def __init__(self, pipeline: ORTNeodragonPipeline):
        self.pipeline = pipeline
        self.stages = {(layout.noisy_height, layout.noisy_width): stage for stage, layout in pipeline.layouts.items()}

    def __call__(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, history=None,
                 encoder_attention_mask=None) -> Transformer2DModelOutput:
        size = tuple(hidden_states.shape[-2:])
        if size not in self.stages:
            raise ValueError(f"no stage graph denoises a {size} latent; exported stages: {self.stages}")
        timestep = torch.as_tensor(timestep).reshape(-1).expand(hidden_states.shape[0])
        rows = []
        for b in range(hidden_states.shape[0]):
            mask = None if encoder_attention_mask is None else encoder_attention_mask[b : b + 1]
            text = (encoder_hidden_states[b : b + 1], mask, pooled_projections[b : b + 1])
            conditions = [clip[b : b + 1] for clip in history or []]
            rows.append(self.pipeline.velocity(self.stages[size], hidden_states[b : b + 1], conditions, text,
                                               timestep[b : b + 1]))
        return Transformer2DModelOutput(sample=torch.cat(rows))


class ORTNeodragonPipeline:
    """Neodragon generation from ONNX graphs.

    Args:
        export_dir: folder written by ``export_pipeline`` / ``neodragon export``.
        session_factory: ``path -> onnxruntime.InferenceSession`` (default: CPU provider).
        precision: ``"fp32"`` runs ``<name>.onnx``; ``"w8a16"`` runs the quantised ``<name>.w8a16.onnx`` where present.
        recorder: if given, a dict that receives every graph's input feeds (``name -> [feeds, ...]``), e.g. to
            calibrate quantisation.
        decoder: ``normalised latents [1, C, T, h, w] -> video [1, 3, F, H, W] in [-1, 1]``, used when the export
            has no ``decoder_step`` graph (e.g. an export with ``--components`` that left it out;
            :func:`torch_vae_decoder`).
    """

    def __init__(self, export_dir, session_factory: Callable | None = None, precision: str = "fp32",
                 recorder: dict[str, list[dict[str, np.ndarray]]] | None = None,
                 decoder: Callable[[torch.Tensor], torch.Tensor] | None = None):
        from transformers import AutoTokenizer

        self.export_dir = Path(export_dir)
        self.manifest = read_manifest(self.export_dir)
        self.session_factory = session_factory or cpu_session_factory
        self.precision = precision
        self.recorder = recorder
        self.decoder = decoder
        self._sessions: dict[str, Any] = {}
        files = self.manifest["files"]
        self.tokenizers = {k: AutoTokenizer.from_pretrained(self.export_dir / v) for k, v in files.items()
                           if "tokenizer" in k}
        self.scheduler = PyramidalDMDScheduler.from_pretrained(self.export_dir / files["scheduler"])
        self.t2i_scheduler = None
        if "t2i_scheduler" in files:
            from diffusers import LCMScheduler

            self.t2i_scheduler = LCMScheduler.from_pretrained(self.export_dir / files["t2i_scheduler"])
        vae = self.manifest["vae"]
        self.vae_spatial, self.vae_temporal = vae["spatial_downsample_scale"], vae["temporal_downsample_scale"]
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_spatial, resample="lanczos")
        size = self.manifest["size"]
        self.height, self.width, self.max_frames = size["height"], size["width"], size["num_frames"]
        self.max_sequence_length = size["max_sequence_length"]
        self.layouts = {
            int(entry["metadata"]["layout"]["stage"]): StageLayout.from_dict(entry["metadata"]["layout"])
            for entry in self.manifest["components"].values() if entry["kind"] == "transformer_stage"
        }
        self.head_dim = next(e["metadata"]["head_dim"] for e in self.manifest["components"].values()
                             if e["kind"] == "transformer_stage")
        self.rope_theta = next(e["metadata"]["rope_theta"] for e in self.manifest["components"].values()
                               if e["kind"] == "transformer_stage")
        self.mask_value = self.manifest["attention_mask_value"]
        self.timestep_params = next(e["metadata"]["timestep_projection"] for e in self.manifest["components"].values()
                                    if e["kind"] == "transformer_stage")

    # ------------------------------------------------------------------------------------------ sessions
    def has(self, name: str) -> bool:
        return name in self.manifest["components"]

    def session(self, name: str):
        if name not in self._sessions:
            if not self.has(name):
                raise ValueError(f"the export has no {name!r} graph; exported: {sorted(self.manifest['components'])}")
            path = self.export_dir / self.manifest["components"][name]["file"]
            if self.precision == "w8a16" and path.with_suffix(".w8a16.onnx").exists():
                path = path.with_suffix(".w8a16.onnx")
            self._sessions[name] = self.session_factory(str(path))
        return self._sessions[name]

    def run(self, name: str, feeds: dict[str, Any]) -> list[np.ndarray]:
        session = self.session(name)
        wanted = [i.name for i in session.get_inputs()]
        arrays = {}
        for key in wanted:
            value = feeds[key]
            arrays[key] = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
        if self.recorder is not None:
            self.recorder.setdefault(name, []).append({k: v.copy() for k, v in arrays.items()})
        return session.run(None, arrays)

    # ------------------------------------------------------------------------------------------ text
    def encode_text(self, text: str):
        """(text tokens [1, L, W], mask [1, L] int, pooled [1, P]) for one text, first rewritten by the prompt
        normaliser its tokenizer names (the Shapes model's; as the torch pipeline does)."""
        normalize = prompt_normalizer(self.tokenizers["tokenizer_3"])
        text = text if normalize is None else normalize(text).text
        tok = self.tokenizers["tokenizer_3"](
            [text], padding="max_length", max_length=self.max_sequence_length, truncation=True, return_tensors="np"
        )
        ids, mask = tok.input_ids.astype(np.int32), tok.attention_mask.astype(np.int32)
        (embeds,) = self.run("text_encoder", {"input_ids": ids, "attention_mask": mask})
        feeds = {}
        for key, name in (("input_ids", "tokenizer"), ("input_ids_2", "tokenizer_2")):
            if name in self.tokenizers:
                t = self.tokenizers[name]
                feeds[key] = t([text], padding="max_length", max_length=t.model_max_length, truncation=True,
                               return_tensors="np").input_ids.astype(np.int32)
        (pooled,) = self.run("pooled_text", feeds)
        return torch.from_numpy(embeds), torch.from_numpy(mask), torch.from_numpy(pooled)

    # ------------------------------------------------------------------------------------------ transformer
    def velocity(self, stage: int, x: torch.Tensor, conditions: Sequence[torch.Tensor], text, timestep) -> torch.Tensor:
        layout = self.layouts[stage]
        slots, valid = pack_history(layout, conditions)
        attention = stage_attention_inputs(layout, valid, text[1], self.head_dim, self.rope_theta, self.mask_value)
        feeds = {"hidden_states": x.float(), **slots, "encoder_hidden_states": text[0], "pooled_projections": text[2],
                 "timestep_proj": timestep_projection(timestep, self.timestep_params), **attention}
        (out,) = self.run(f"transformer_stage_{stage}", feeds)
        return torch.from_numpy(out)

    # ------------------------------------------------------------------------------------------ first frame
    def encode_first_frame(self, image, generator) -> torch.Tensor:
        pixels = self.video_processor.preprocess(image, height=self.height, width=self.width)[:, :, None]
        (moments,) = self.run("vae_encoder", {"sample": pixels.float()})
        latent = DiagonalGaussianDistribution(torch.from_numpy(moments)).sample(generator=generator)
        vae = self.manifest["vae"]
        return (latent - vae["image_latent_shift"]) * vae["image_latent_scale"]

    def first_frame_image(self, prompt: str, generator, **overrides) -> PIL.Image.Image:
        """The hybrid first frame: the exported SDXL-style text-to-image graphs with LCM (4 steps, no CFG)."""
        from diffusers.image_processor import VaeImageProcessor

        if self.t2i_scheduler is None or not self.has("t2i_unet"):
            raise ValueError(
                "this export has no first-frame (text-to-image) graphs: pass `image=` or mode='monolithic'")
        kwargs = {**FIRST_FRAME_DEFAULTS, **overrides}
        if kwargs.get("guidance_scale", 0.0) > 1.0:
            raise ValueError("the exported first-frame graphs run without classifier-free guidance")
        height, width = 2 * self.height, 2 * self.width
        hidden, pooled = [], None
        for name, tok_name in (("t2i_text_encoder", "t2i_tokenizer"), ("t2i_text_encoder_2", "t2i_tokenizer_2")):
            if not self.has(name):
                continue
            tok = self.tokenizers[tok_name]
            ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="np").input_ids.astype(np.int32)
            states, pooled_out = self.run(name, {"input_ids": ids})
            hidden.append(states)
            pooled = pooled_out
        prompt_embeds = np.concatenate(hidden, axis=-1)
        scheduler = self.t2i_scheduler
        scheduler.set_timesteps(timesteps=kwargs["timesteps"]) if kwargs.get("timesteps") else \
            scheduler.set_timesteps(kwargs["num_inference_steps"])
        shape = self.manifest["components"]["t2i_unet"]["inputs"]["sample"]["shape"]
        latents = randn_tensor(tuple(shape), generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma
        time_ids = np.array([[height, width, 0, 0, height, width]], dtype=np.float32)
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, t)
            (noise_pred,) = self.run("t2i_unet", {
                "sample": model_input, "timestep": np.array([float(t)], dtype=np.float32),
                "encoder_hidden_states": prompt_embeds, "text_embeds": pooled, "time_ids": time_ids,
            })
            latents = scheduler.step(torch.from_numpy(noise_pred), t, latents, generator=generator).prev_sample
        scaling = self.manifest["components"]["t2i_vae_decoder"]["metadata"]["scaling_factor"]
        (image,) = self.run("t2i_vae_decoder", {"latent_sample": latents / scaling})
        return VaeImageProcessor(vae_scale_factor=self.manifest["t2i"]["vae_scale_factor"]).postprocess(
            torch.from_numpy(image), output_type="pil")[0]

    # ------------------------------------------------------------------------------------------ decode
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [1, C, T, h, w] → video [1, 3, 8T - 7, H, W], one latent frame per decoder step."""
        if not self.has("decoder_step"):
            if self.decoder is not None:
                return self.decoder(latents.float()).float()
            raise ValueError("this export has no decoder_step graph: pass output_type='latent', or a torch decoder "
                             "(decoder=torch_vae_decoder(vae)), or export a streaming decoder")
        entry = self.manifest["components"]["decoder_step"]
        if entry["metadata"].get("decoder") == "causal":
            return self._decode_causal(latents)
        memories = [np.zeros(shape, dtype=np.float32) for shape in entry["metadata"]["memory_shapes"]]
        trim = entry["metadata"]["frames_to_trim"]
        frames = []
        for index in range(latents.shape[2]):
            raw = self._raw_latent(latents, index)
            feeds = {"latents": raw, **{f"memory_{k}": m for k, m in enumerate(memories)}}
            out = self.run("decoder_step", feeds)
            video, memories = torch.from_numpy(out[0]), out[1:]
            frames.append(video[:, :, trim:] if index == 0 else video)
        return torch.cat(frames, dim=2)

    def _raw_latent(self, latents: torch.Tensor, index: int) -> torch.Tensor:
        vae = self.manifest["vae"]
        z = latents[:, :, index : index + 1].float()
        if index == 0:
            return z / vae["image_latent_scale"] + vae["image_latent_shift"]
        return z / vae["video_latent_scale"] + vae["video_latent_shift"]

    def _decode_causal(self, latents: torch.Tensor) -> torch.Tensor:
        """The full causal decoder: ``decoder_first_step`` on latent frame 0 (1 frame), then ``decoder_step`` on each
        later one (8 frames), every step's conv caches fed to the next."""
        if not self.has("decoder_first_step"):
            raise ValueError("this export has the full causal decoder's decoder_step but no decoder_first_step graph "
                             "for latent frame 0: export both (--components decoder_step selects both)")
        out = self.run("decoder_first_step", {"latents": self._raw_latent(latents, 0)})
        frames, caches = [torch.from_numpy(out[0])], out[1:]
        for index in range(1, latents.shape[2]):
            feeds = {"latents": self._raw_latent(latents, index), **{f"cache_{k}": c for k, c in enumerate(caches)}}
            out = self.run("decoder_step", feeds)
            frames.append(torch.from_numpy(out[0]))
            caches = out[1:]
        return torch.cat(frames, dim=2)

    def super_resolve(self, video: torch.Tensor) -> torch.Tensor:
        frames = [torch.from_numpy(self.run("super_resolution", {"sample": video[:, :, i]})[0])
                  for i in range(video.shape[2])]
        return torch.stack(frames, dim=2)

    # ------------------------------------------------------------------------------------------ call
    def __call__(
        self,
        prompt: str,
        image=None,
        negative_prompt: str | None = None,
        mode: str | None = None,
        num_frames: int | None = None,
        num_inference_steps=None,
        video_num_inference_steps=None,
        guidance_scale: float | None = None,
        video_guidance_scale: float | None = None,
        history_noise: float | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        super_resolution: bool | None = None,
        first_frame_kwargs: dict[str, Any] | None = None,
        output_type: str = "np",
    ):
        """Generate one video; arguments as ``NeodragonPipeline.__call__`` (height/width are the export's)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("`prompt` must be one non-empty string (the ONNX pipeline runs batch 1)")
        config = self.manifest["pipeline_config"]
        mode = mode or config["mode"]
        if mode not in MODE_DEFAULTS:
            raise ValueError(f"`mode` must be one of {sorted(MODE_DEFAULTS)}, got {mode!r}")
        num_frames = self.max_frames if num_frames is None else num_frames
        if (num_frames - 1) % self.vae_temporal or not 1 <= num_frames <= self.max_frames:
            raise ValueError(
                f"`num_frames` must be {self.vae_temporal}k+1 and at most {self.max_frames} (the export's)")
        defaults = MODE_DEFAULTS[mode]
        stages = self.scheduler.config.stages

        def per_stage(steps, default):
            steps = default if steps is None else steps
            return [steps] * stages if isinstance(steps, int) else list(steps)

        steps_first = per_stage(num_inference_steps, defaults["num_inference_steps"])
        steps_video = per_stage(video_num_inference_steps, defaults["video_num_inference_steps"])
        # A call's value, then the exported pipeline's config (older manifests lack it), then the mode's.
        guidance_scale = first_given(guidance_scale, config.get("default_guidance_scale"), defaults["guidance_scale"])
        video_guidance_scale = first_given(
            video_guidance_scale, config.get("default_video_guidance_scale"), defaults["video_guidance_scale"])
        history_noise = first_given(history_noise, config.get("default_history_noise"), 0.0)
        if not 0 <= history_noise < 1:
            raise ValueError(f"`history_noise` must be a number in [0, 1), got {history_noise!r}")
        first_from_dit = image is None and mode == "monolithic"
        cfg_first = first_from_dit and guidance_scale > 1.0
        cfg_video = num_frames > 1 and video_guidance_scale > 1.0

        text_prompt = prompt + config["prompt_suffix"]
        positive = self.encode_text(text_prompt)
        negative = None
        if cfg_first or cfg_video:
            negative = self.encode_text(negative_prompt if negative_prompt is not None
                                        else config["default_negative_prompt"])

        latent_frames = (num_frames - 1) // self.vae_temporal + 1
        channels = self.manifest["transformer"]["in_channels"]
        shape = (1, channels, latent_frames, self.height // self.vae_spatial, self.width // self.vae_spatial)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}")
        noise = self.scheduler.downsample_noise(latents.float(), times=stages - 1)

        generated = []
        if not first_from_dit:
            if image is None:
                image = self.first_frame_image(text_prompt, generator, **(first_frame_kwargs or {}))
            generated.append(self.encode_first_frame(image, generator))

        history_sigma = torch.full((1,), float(history_noise)) if history_noise > 0 else None
        stage_graphs = ORTStageTransformer(self)
        cfg_text = None if negative is None else tuple(torch.cat([n, p]) for n, p in zip(negative, positive))
        for unit in range(len(generated), latent_frames):
            is_first = unit == 0
            use_cfg = cfg_first if is_first else cfg_video
            history = self.scheduler.pyramid(torch.cat(generated, dim=2)) if generated else None
            # The torch pipeline's own per-frame loop, its transformer calls answered by the stage graphs.
            x = sample_latent_frame(
                stage_graphs, self.scheduler, noise[:, :, unit : unit + 1], history, cfg_text if use_cfg else positive,
                steps_first if is_first else steps_video,
                (guidance_scale if is_first else video_guidance_scale) if use_cfg else None, generator, history_sigma,
            )
            generated.append(x)
        latents = torch.cat(generated, dim=2)
        if output_type == "latent":
            return latents
        video = self.decode(latents)
        if super_resolution is None:
            super_resolution = self.has("super_resolution")
        if super_resolution:
            video = self.super_resolve(video)
        return self.video_processor.postprocess_video(video.float(), output_type=output_type)
