"""Numerical equivalence of the converted checkpoints with the official Neodragon code, run side by side.

    python benchmarks/compare_with_reference.py --reference /path/to/neodragon [--device cpu|cuda] [--full-size]
        [--pyramid-flow /path/to/Pyramid-Flow]

``--reference`` is a local checkout of Qualcomm-AI-research/neodragon (the folder holding the ``neodragon`` package);
it is imported from there and never copied into this repository. The script

1. builds the official classes (``PyramidMMDiT`` x2, ``ContextAdapter`` x2, ``AsymmetricCausalVideoVAE``,
   ``T5EncoderWithProjection``) with random weights — tiny by default, the released sizes with ``--full-size`` —
   plus tiny CLIP-L/G stand-ins, word-level tokenizers and a tiny SSD-1B, and writes them with their own
   ``save_pretrained`` in the official snapshot layout (a folder per component, no ``model_index.json``);
2. converts that folder with ``diffusers_neodragon.loaders.load_official_neodragon`` and compares outputs,
   fp32: transformer (history clips at three resolutions, padded text), VAE encoder (posterior mean and log-variance),
   VAE decoder, context adapter and DT5 — max abs diff, tolerance 1e-4;
3. runs a full generation both ways on the tiny models (49 frames = 7 latent frames, 64x128): the official
   ``generate()`` (hybrid: 1-1-1 without CFG from a given first frame; monolithic: DiT first frame with CFG 7,
   video CFG 5) against ``NeodragonPipeline`` on the
   converted components, and reports the max latent difference and the per-frame PSNR of the decoded videos
   (target >= 40 dB);
4. with ``--pyramid-flow`` (default: /work/ref/pyramid-flow when present) also converts Pyramid-Flow's
   ``PyramidDiffusionMMDiT`` (with its ``context_embedder``) and full ``CausalVideoVAE`` and compares them.

It prints a table and exits with status 1 if any tolerance is missed.

Same random numbers on both sides. Our pipeline runs first, with a seeded ``torch.Generator``; we record
(a) the full-resolution initial noise — drawn here and passed to our pipeline as ``latents=``;
(b) the VAE posterior noise of the first-frame encoding, by wrapping ``randn_tensor`` in
``diffusers.models.autoencoders.vae`` (the module of the ``DiagonalGaussianDistribution`` our VAE returns);
(c) every block noise returned by ``PyramidalDMDScheduler.block_noise`` (one per unit and stage jump), in call order.
The official ``generate()`` then runs unmodified except for three monkeypatches of names it looks up at call time:
``neodragon.utils.generation_utils.randn_tensor`` returns (a) (its only use is ``_prepare_latent_noise``);
``neodragon.asymmetric_causal_video_vae.randn_tensor`` returns (b) (its only use is the posterior ``sample()``);
``neodragon.utils.generation_utils._sample_block_noise`` returns the next tensor of (c), checking that the shape it
is asked for is the recorded one. The official block sampler (a ``MultivariateNormal`` per 2x2 block, drawn from the
global CPU generator) is thereby replaced by our closed form of the same distribution: the two draw different numbers
from any seed, so only replaying one side's draws into the other makes the runs comparable (that the closed form has
the official covariance is tested with the scheduler). The text encoders are the
official ``TextEncoderBundle`` around the official DT5 and the CLIP stand-ins, with our word-level tokenizers in
place of the released vocabularies (the official ``perf`` notes used a stub bundle; this one runs the official code).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.machinery
import json
import math
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import PIL.Image
import torch


REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TOLERANCE = 1e-4
PSNR_TARGET = 40.0
WORDS = ("a an the red green blue yellow circle square triangle moving left right up down on background cat dog , "
         "cinematic realistic textures high detail natural colours cartoon style worst quality low blurry absolute "
         "black white res extra limbs digits misplaced objects mutated anatomy monochrome horror").split()
PROMPT = "a red circle moving left on a blue background"


# ----------------------------------------------------------------------------------------- importing references


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    return module


@contextlib.contextmanager
def _temporary_modules(modules: dict):
    """Put stub modules in sys.modules for the duration of an import, then restore what was there."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _timm_stubs() -> dict:
    """The references import timm only for ``trunc_normal_`` (weight init); stub it when timm is not installed."""
    if importlib.util.find_spec("timm") is not None:
        return {}
    no_op = lambda *args, **kwargs: None  # noqa: E731
    layers = dict(trunc_normal_=torch.nn.init.trunc_normal_, drop_path=no_op, to_2tuple=no_op)
    return {"timm": _stub("timm"), "timm.layers": _stub("timm.layers", **layers),
            "timm.models": _stub("timm.models"), "timm.models.layers": _stub("timm.models.layers", **layers)}


def import_official(reference: os.PathLike) -> types.SimpleNamespace:
    """The official modules, imported from ``reference/neodragon`` without running its top-level ``__init__``."""
    package_dir = Path(reference) / "neodragon"
    if not package_dir.is_dir():
        raise FileNotFoundError(f"no `neodragon` package in {reference}")
    existing = sys.modules.get("neodragon")
    if existing is None:
        package = _stub("neodragon")
        package.__path__ = [str(package_dir)]
        sys.modules["neodragon"] = package
    elif [os.path.realpath(p) for p in existing.__path__] != [os.path.realpath(package_dir)]:
        raise RuntimeError(f"a different `neodragon` package is already imported from {list(existing.__path__)}")
    names = ("pyramid_mmdit", "context_adapter", "distil_t5", "asymmetric_causal_video_vae", "pyramid_scheduler",
             "text_encoder_bundle", "utils.generation_utils")
    with _temporary_modules(_timm_stubs()):
        modules = {name.split(".")[-1]: importlib.import_module(f"neodragon.{name}") for name in names}
    return types.SimpleNamespace(**modules)


def import_pyramid_flow(path: os.PathLike) -> types.SimpleNamespace:
    """Pyramid-Flow's SD3 DiT and causal VAE modules (their distributed helpers and IPython stubbed)."""
    path = Path(path)
    no_op = lambda *args, **kwargs: None  # noqa: E731
    stubs = {
        **_timm_stubs(),
        "IPython": _stub("IPython", embed=no_op),
        "trainer_misc": _stub("trainer_misc", is_sequence_parallel_initialized=lambda: False,
                              get_sequence_parallel_group=no_op, get_sequence_parallel_world_size=lambda: 1,
                              get_sequence_parallel_rank=lambda: 0, all_to_all=no_op),
        "utils": _stub("utils", is_context_parallel_initialized=lambda: False, get_context_parallel_group=no_op,
                       get_context_parallel_world_size=lambda: 1, get_context_parallel_rank=lambda: 0,
                       get_context_parallel_group_rank=lambda: 0),
    }
    packages = {}
    for alias, folder in (("_pyramid_flow_dit", path / "pyramid_dit" / "mmdit_modules"),
                          ("_pyramid_flow_vae", path / "video_vae")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} not found")
        package = _stub(alias)
        package.__path__ = [str(folder)]
        packages[alias] = package
    with _temporary_modules({**stubs, **packages}):
        dit = importlib.import_module("_pyramid_flow_dit.modeling_pyramid_mmdit")
        vae = importlib.import_module("_pyramid_flow_vae.modeling_causal_vae")
    return types.SimpleNamespace(dit=dit, vae=vae)


# ----------------------------------------------------------------------------------------- sizes and weights


def sizes(full_size: bool) -> dict:
    if full_size:  # the released configurations (fact sheet §1, §4, §5), as benchmarks/full_size.py builds them
        from benchmarks import full_size as released

        configs = released.configs()
        dit, adapter, dt5 = configs["transformer"], configs["context_adapter"], configs["text_encoder_3"]
        return dict(
            dit=dict(num_layers=dit.num_layers), pf_dit=dict(num_layers=24),
            adapter=dict(input_dims=adapter.in_features, output_dims=adapter.out_features,
                         layer_depths=tuple(adapter.hidden_features), skips=(True,) * len(adapter.hidden_features)),
            vae={}, pf_vae=dict(encoder_out_channels=16, decoder_in_channels=16),
            dt5=dict(vocab_size=dt5.vocab_size, d_model=dt5.d_model, d_kv=dt5.d_kv, d_ff=dt5.d_ff,
                     num_layers=dt5.num_layers, num_heads=dt5.num_heads, feed_forward_proj=dt5.feed_forward_proj,
                     project_in_dim=dt5.d_model, out_dim=dt5.projection_dim),
            clip_projection=1024, latent_channels=16, latent_hw=(16, 16), t5_width=4096,
        )
    return dict(
        dit=dict(num_layers=3, attention_head_dim=8, num_attention_heads=2, pooled_projection_dim=16, sample_size=16,
                 pos_embed_max_size=16, in_channels=4, caption_projection_dim=16),
        pf_dit=dict(num_layers=3, attention_head_dim=8, num_attention_heads=2, pooled_projection_dim=16,
                    sample_size=16, pos_embed_max_size=16, in_channels=4, caption_projection_dim=16,
                    joint_attention_dim=20),
        adapter=dict(input_dims=24, output_dims=16, layer_depths=(32, 32), skips=(True, True)),
        vae=dict(encoder_out_channels=4, encoder_block_out_channels=(8, 16, 16, 16), encoder_norm_num_groups=4,
                 encoder_layers_per_block=(1, 2, 1, 1), decoder_num_features=(16, 8, 8, 8)),
        pf_vae=dict(encoder_out_channels=4, decoder_in_channels=4, encoder_block_out_channels=(8, 16, 16, 16),
                    decoder_block_out_channels=(8, 16, 16, 16), encoder_norm_num_groups=4, decoder_norm_num_groups=4,
                    decoder_layers_per_block=(2, 1, 1, 1)),
        dt5=dict(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, feed_forward_proj="gated-gelu",
                 project_in_dim=16, out_dim=24),
        clip_projection=8, latent_channels=4, latent_hw=(8, 8), t5_width=20,
    )


@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Replace the (mostly zero) reference init by values that keep every path O(1): fan-in scaled weights, small
    biases, norm weights near 1. Buffers (the sincos table) are left alone."""
    generator = torch.Generator().manual_seed(seed)
    for _, param in sorted(module.named_parameters()):
        value = torch.randn(param.shape, generator=generator)
        if param.ndim >= 2:
            value /= math.sqrt(param[0].numel())
        elif param.ndim == 1 and param.shape[0] > 0:
            value = 0.1 * value + (1.0 if _is_norm_weight(module, param) else 0.0)
        param.copy_(value)
    return module


def _is_norm_weight(module: torch.nn.Module, param: torch.Tensor) -> bool:
    for sub in module.modules():
        if isinstance(sub, (torch.nn.GroupNorm, torch.nn.LayerNorm)) or type(sub).__name__.endswith("RMSNorm") or \
                type(sub).__name__ in ("T5LayerNorm", "CausalGroupNorm"):
            if getattr(sub, "weight", None) is param:
                return True
    return False


# ----------------------------------------------------------------------------------------- the official snapshot


def word_tokenizer(max_length: int, clip: bool):
    from diffusers_neodragon.data.vocab_tokenizer import build_word_level_tokenizer

    if clip:
        return build_word_level_tokenizer(WORDS, model_max_length=max_length, bos_token="<|startoftext|>",
                                          eos_token="<|endoftext|>")
    return build_word_level_tokenizer(WORDS, model_max_length=max_length)


def tiny_clip(cls, tokenizer, projection: int, seed: int):
    from transformers import CLIPTextConfig

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        projection_dim=projection, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return randomize(cls(config), seed).eval()


def tiny_ssd1b(seed: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=4, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=32,
        cross_attention_dim=32, norm_num_groups=4,
    )
    vae = AutoencoderKL(block_out_channels=(8, 8), latent_channels=4, norm_num_groups=4, sample_size=32,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    tokenizer = word_tokenizer(12, clip=True)
    return dict(unet=unet, vae=vae, tokenizer=tokenizer, tokenizer_2=word_tokenizer(12, clip=True),
                text_encoder=tiny_clip(CLIPTextModel, tokenizer, 8, seed + 1),
                text_encoder_2=tiny_clip(CLIPTextModelWithProjection, tokenizer, 8, seed + 2))


MODE_FOLDERS = {"hybrid": ("diffusion_transformer_320p", "context_adapter"),
                "monolithic": ("diffusion_transformer_320p_multistep_t2v", "context_adapter_multistep_t2v")}


def build_official_snapshot(official, root: Path, size: dict, seed: int = 0, modes=("hybrid", "monolithic")) -> dict:
    """Official modules with random weights, saved in the release layout under ``root``; returns the modules."""
    from transformers import CLIPTextModelWithProjection

    root = Path(root)
    built = {}
    for offset, (dit_folder, adapter_folder) in enumerate(MODE_FOLDERS[mode] for mode in modes):
        with contextlib.redirect_stdout(open(os.devnull, "w")):  # the reference prints a banner
            dit = official.pyramid_mmdit.PyramidMMDiT(**size["dit"])
        built[dit_folder] = randomize(dit, seed + offset).eval()
        adapter = official.context_adapter.ContextAdapter(**size["adapter"])
        built[adapter_folder] = randomize(adapter, seed + 10 + offset)
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        vae = official.asymmetric_causal_video_vae.AsymmetricCausalVideoVAE(**size["vae"])
    built["causal_video_vae"] = randomize(vae, seed + 20).eval()
    t5_tokenizer = word_tokenizer(16, clip=False)
    dt5_kwargs = {"vocab_size": len(t5_tokenizer), **size["dt5"]}
    dt5_kwargs.update(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    dt5 = official.distil_t5.T5EncoderWithProjection(official.distil_t5.T5ProjectionConfig(**dt5_kwargs))
    built["text_encoder_3"] = randomize(dt5, seed + 21).eval()
    for name, module in built.items():
        module.save_pretrained(root / name)

    t5_tokenizer.save_pretrained(root / "tokenizer_3")
    built["tokenizer_3"] = t5_tokenizer
    for index, suffix in enumerate(("", "_2")):
        tokenizer = word_tokenizer(12, clip=True)
        encoder = tiny_clip(CLIPTextModelWithProjection, tokenizer, size["clip_projection"], seed + 30 + index)
        encoder.save_pretrained(root / f"text_encoder{suffix}")
        tokenizer.save_pretrained(root / f"tokenizer{suffix}")
        built[f"text_encoder{suffix}"], built[f"tokenizer{suffix}"] = encoder, tokenizer
    for name, component in tiny_ssd1b(seed + 40).items():
        component.save_pretrained(root / f"ssd_1b_{name}")
    return built


# ----------------------------------------------------------------------------------------- component comparisons


def max_diff(a: torch.Tensor, b: torch.Tensor) -> tuple:
    """(max |a - b|, max |b|): the difference and the size of the reference output it is measured against."""
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: ours {tuple(a.shape)}, official {tuple(b.shape)}")
    return (a.double() - b.double()).abs().max().item(), b.double().abs().max().item()


@torch.no_grad()
def compare_transformer(official_dit, ours, device, size, context_width=None, generator_seed=0) -> float:
    """History clips at the three pyramid resolutions + the noisy clip, two samples, padded text."""
    g = torch.Generator().manual_seed(generator_seed)
    c = official_dit.config.in_channels
    h, w = size["latent_hw"]
    clips = [torch.randn(2, c, 2, h // 4, w // 4, generator=g), torch.randn(2, c, 1, h // 2, w // 2, generator=g),
             torch.randn(2, c, 1, h, w, generator=g), torch.randn(2, c, 1, h, w, generator=g)]
    width = context_width or official_dit.config.num_attention_heads * official_dit.config.attention_head_dim
    text = torch.randn(2, 12, width, generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, 7:] = 0
    pooled = torch.randn(2, official_dit.config.pooled_projection_dim, generator=g)
    timestep = torch.tensor([744.0, 386.0])
    clips, text, mask, pooled, timestep = [x.to(device) for x in clips], text.to(device), mask.to(device), \
        pooled.to(device), timestep.to(device)
    expected = official_dit(sample=[clips], encoder_hidden_states=text, encoder_attention_mask=mask,
                            pooled_projections=pooled, timestep_ratio=timestep)[0]
    got = ours(hidden_states=clips[-1], history=clips[:-1], encoder_hidden_states=text, encoder_attention_mask=mask,
               pooled_projections=pooled, timestep=timestep).sample
    return max_diff(got, expected)


@torch.no_grad()
def compare_vae(official_vae, ours, device, size) -> dict:
    g = torch.Generator().manual_seed(1)
    h, w = (8 * x for x in size["latent_hw"])
    video = (torch.rand(1, 3, 17, h, w, generator=g) * 2 - 1).to(device)
    z = torch.randn(1, ours.config.latent_channels, 3, *size["latent_hw"], generator=g).to(device)
    expected, got = official_vae.encode(video).latent_dist, ours.encode(video).latent_dist
    return {
        "VAE encoder (mean)": max_diff(got.mean, expected.mean),
        "VAE encoder (logvar)": max_diff(got.logvar, expected.logvar),
        "VAE decoder": max_diff(ours.decode(z).sample, official_vae.decode(z).sample),
    }


@torch.no_grad()
def compare_adapter(official_adapter, ours, device) -> float:
    x = torch.randn(2, 12, official_adapter.config.input_dims, generator=torch.Generator().manual_seed(2)).to(device)
    return max_diff(ours(x), official_adapter(x))


@torch.no_grad()
def compare_dt5(official_dt5, ours, device) -> float:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, official_dt5.config.vocab_size, (2, 16), generator=g)
    mask = torch.ones_like(ids)
    ids[0, 9:], mask[0, 9:] = 0, 0
    ids[0, 8] = ids[1, 15] = 1
    ids, mask = ids.to(device), mask.to(device)
    return max_diff(ours(ids, attention_mask=mask).last_hidden_state, official_dt5(ids, attention_mask=mask)[0])


# ----------------------------------------------------------------------------------------- generation


class NoiseRecorder:
    """Records the random numbers our pipeline draws (see the module docstring) and replays them into the official
    ``generate()``."""

    def __init__(self, pipe):
        self.pipe, self.posterior, self.block = pipe, [], []

    @contextlib.contextmanager
    def record(self):
        import diffusers.models.autoencoders.vae as vae_module

        original_randn, original_block = vae_module.randn_tensor, self.pipe.scheduler.block_noise

        def randn(*args, **kwargs):
            self.posterior.append(original_randn(*args, **kwargs))
            return self.posterior[-1]

        def block(*args, **kwargs):
            self.block.append(original_block(*args, **kwargs))
            return self.block[-1]

        vae_module.randn_tensor, self.pipe.scheduler.block_noise = randn, block
        try:
            yield self
        finally:
            vae_module.randn_tensor = original_randn
            del self.pipe.scheduler.block_noise  # back to the class method

    @contextlib.contextmanager
    def replay(self, official, initial_noise):
        gen, vae = official.generation_utils, official.asymmetric_causal_video_vae
        posterior, block = list(self.posterior), list(self.block)
        saved = gen.randn_tensor, vae.randn_tensor, gen._sample_block_noise

        def initial(shape, generator=None, device=None, dtype=None, **kwargs):
            assert tuple(shape) == tuple(initial_noise.shape), (shape, initial_noise.shape)
            return initial_noise.to(device=device, dtype=dtype)

        def posterior_noise(shape, generator=None, device=None, dtype=None, **kwargs):
            tensor = posterior.pop(0)
            assert tuple(shape) == tuple(tensor.shape), (shape, tensor.shape)
            return tensor.to(device=device, dtype=dtype)

        def block_noise(gamma, bs, ch, temp, height, width):
            tensor = block.pop(0)
            assert tuple(tensor.shape) == (bs, ch, temp, height, width), (tensor.shape, (bs, ch, temp, height, width))
            return tensor

        gen.randn_tensor, vae.randn_tensor, gen._sample_block_noise = initial, posterior_noise, block_noise
        try:
            yield
        finally:
            gen.randn_tensor, vae.randn_tensor, gen._sample_block_noise = saved
        if posterior or block:
            raise AssertionError(f"the official run used fewer random draws than ours: {len(posterior)} posterior, "
                                 f"{len(block)} block noises left")


def psnr_per_frame(a: torch.Tensor, b: torch.Tensor) -> list:
    """PSNR (dB) per frame of two videos [T, 3, H, W] in [0, 1]."""
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    return [float("inf") if m == 0 else 10 * math.log10(1.0 / m) for m in mse.tolist()]


@torch.no_grad()
def compare_generation(official, built, pipe, device, mode: str, height=64, width=128, num_frames=49) -> dict:
    gen = official.generation_utils
    bundle = official.text_encoder_bundle.TextEncoderBundle(
        built["tokenizer"], built["text_encoder"], built["tokenizer_2"], built["text_encoder_2"], built["tokenizer_3"],
        built["text_encoder_3"],
    ).to(device)
    dit_folder, adapter_folder = MODE_FOLDERS[mode]
    latent_shape = (1, pipe.transformer.config.in_channels, (num_frames - 1) // 8 + 1, height // 8, width // 8)
    noise = torch.randn(latent_shape, generator=torch.Generator().manual_seed(7)).to(device)
    rng = np.random.default_rng(7)
    image = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) if mode == "hybrid" else None
    settings = dict(
        hybrid=dict(num_inference_steps=[1, 1, 1], video_num_inference_steps=[1, 1, 1], guidance_scale=0.0,
                    video_guidance_scale=0.0),
        monolithic=dict(num_inference_steps=[3, 2, 2], video_num_inference_steps=[2, 2, 2], guidance_scale=7.0,
                        video_guidance_scale=5.0),
    )[mode]

    recorder = NoiseRecorder(pipe)
    ours = {}
    for output_type in ("latent", "pt"):
        recorder.posterior.clear(), recorder.block.clear()
        with recorder.record():
            ours[output_type] = pipe(PROMPT, image=image, mode=mode, height=height, width=width, num_frames=num_frames,
                                     latents=noise, generator=torch.Generator(device).manual_seed(0),
                                     output_type=output_type, **settings).frames
    with recorder.replay(official, noise), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), \
            contextlib.redirect_stderr(devnull):  # its prints and per-unit tqdm bars
        official_latents = gen.generate(
            bundle, built[dit_folder], built[adapter_folder], built["causal_video_vae"],
            official.pyramid_scheduler.PyramidFlowMatchEulerDiscreteScheduler(), prompt=PROMPT, image=image,
            height=height, width=width, num_frames=num_frames, do_classifier_free_guidance=mode == "monolithic",
            output_type="latent", device=torch.device(device), dtype=torch.float32, **settings,
        )
    official_video = gen._decode_latent(built["causal_video_vae"], official_latents.clone(), return_tensor=True)
    official_video = (official_video.float() / 2 + 0.5).clamp(0, 1).permute(0, 3, 1, 2)  # [T, 3, H, W]
    psnr = psnr_per_frame(ours["pt"][0], official_video)
    return {"latent max diff": max_diff(ours["latent"], official_latents), "psnr": psnr,
            "video std": official_video.std().item(),
            "frames": len(psnr), "draws": (len(recorder.posterior), len(recorder.block))}


# ----------------------------------------------------------------------------------------- main


def run(reference, device="cpu", full_size=False, pyramid_flow=None, workdir=None, log=print) -> list:
    """All comparisons; returns rows (name, value, limit, ok, note)."""
    from diffusers_neodragon import NeodragonPipeline
    from diffusers_neodragon.loaders import (
        load_official_neodragon,
        load_official_transformer,
        load_pyramid_flow_vae,
    )

    official = import_official(reference)
    rows = []

    def add(name, value, limit, higher_is_better=False, note=""):
        if isinstance(value, tuple):  # (difference, reference magnitude)
            value, scale = value
            note = f"official output max |x| = {scale:.3g}" + (f"; {note}" if note else "")
        ok = value >= limit if higher_is_better else value <= limit
        rows.append((name, value, limit, ok, note))
        log(f"  {name}: {value:.3g} ({'ok' if ok else 'FAIL'})")

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        component_size = sizes(full_size)
        log(f"building the official {'full-size' if full_size else 'tiny'} components ...")
        # At full size one transformer (6 GB in fp32) at a time is what a CPU machine holds twice over.
        component_modes = ("hybrid",) if full_size else ("hybrid", "monolithic")
        built = build_official_snapshot(official, Path(tmp) / "components", component_size, modes=component_modes)
        log("converting and comparing components ...")
        for mode in component_modes:
            converted = load_official_neodragon(Path(tmp) / "components", mode=mode)
            dit_folder, adapter = MODE_FOLDERS[mode]
            add(f"transformer ({dit_folder})", compare_transformer(built[dit_folder].to(device),
                                                                    converted["transformer"].to(device), device,
                                                                    component_size), TOLERANCE)
            add(f"context adapter ({adapter})",
                compare_adapter(built[adapter].to(device), converted["context_adapter"].to(device), device), TOLERANCE)
            if mode == "hybrid":
                for name, value in compare_vae(built["causal_video_vae"].to(device), converted["vae"].to(device),
                                               device, component_size).items():
                    add(name, value, TOLERANCE)
                add("DT5 text encoder", compare_dt5(built["text_encoder_3"].to(device),
                                                    converted["text_encoder_3"].to(device), device), TOLERANCE)
            del converted
            gc.collect()
        if full_size:  # free the big ones; the generation runs on tiny models
            del built
            gc.collect()
            built = build_official_snapshot(official, Path(tmp) / "tiny", sizes(False))
            snapshot = Path(tmp) / "tiny"
        else:
            snapshot = Path(tmp) / "components"

        for mode in ("hybrid", "monolithic"):
            log(f"generating ({mode}) with the official generate() and with NeodragonPipeline ...")
            pipe = NeodragonPipeline(**load_official_neodragon(snapshot, mode=mode)).to(device)
            pipe.set_progress_bar_config(disable=True)
            for module in ("causal_video_vae", "text_encoder_3", "text_encoder", "text_encoder_2",
                           "diffusion_transformer_320p", "diffusion_transformer_320p_multistep_t2v", "context_adapter",
                           "context_adapter_multistep_t2v"):
                built[module].to(device)
            result = compare_generation(official, built, pipe, device, mode)
            add(f"generation {mode}: latent max diff", result["latent max diff"], TOLERANCE,
                note=f"{result['draws'][0]} posterior + {result['draws'][1]} block noises replayed")
            add(f"generation {mode}: min per-frame PSNR (dB)", min(result["psnr"]), PSNR_TARGET, higher_is_better=True,
                note=f"mean {np.mean([p for p in result['psnr'] if math.isfinite(p)] or [float('inf')]):.1f} dB over "
                     f"{result['frames']} frames; official video std {result['video std']:.3f}")

        if pyramid_flow is not None:
            log("Pyramid-Flow: converting and comparing its DiT and causal VAE ...")
            pf = import_pyramid_flow(pyramid_flow)
            with contextlib.redirect_stdout(open(os.devnull, "w")):
                dit = pf.dit.PyramidDiffusionMMDiT(
                    **component_size["pf_dit"], use_flash_attn=False, use_t5_mask=True, add_temp_pos_embed=True,
                    temp_pos_embed_type="rope", use_temporal_causal=True, interp_condition_pos=True,
                    pos_embed_type="sincos",
                )
                vae = pf.vae.CausalVideoVAE(**component_size["pf_vae"], interpolate=False)
            randomize(dit, 50).eval().save_pretrained(Path(tmp) / "pf_dit")
            randomize(vae, 51).eval().save_pretrained(Path(tmp) / "pf_vae")
            ours_dit = load_official_transformer(Path(tmp) / "pf_dit", source="pyramid_flow").to(device)
            add("Pyramid-Flow transformer (context_embedder)",
                compare_transformer(dit.to(device), ours_dit, device, component_size,
                                    context_width=dit.config.joint_attention_dim), TOLERANCE)
            for name, value in compare_vae(vae.to(device), load_pyramid_flow_vae(Path(tmp) / "pf_vae").to(device),
                                           device, component_size).items():
                add(f"Pyramid-Flow {name.replace('VAE ', 'VAE ')}", value, TOLERANCE)
    return rows


def print_table(rows) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n{'check'.ljust(width)}  {'value':>12}  {'limit':>10}  result  note")
    print("-" * (width + 50))
    for name, value, limit, ok, note in rows:
        limit_text = f">= {limit:g}" if "PSNR" in name else f"<= {limit:g}"
        print(f"{name.ljust(width)}  {value:12.3e}  {limit_text:>10}  {'ok' if ok else 'FAIL':6}  {note}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="checkout of Qualcomm-AI-research/neodragon")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--full-size", action="store_true",
                        help="compare the components at the released sizes (the generation stays tiny)")
    parser.add_argument("--pyramid-flow", default=None,
                        help="checkout of jy0205/Pyramid-Flow (default: /work/ref/pyramid-flow when present; "
                             "'none' to skip)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    pyramid_flow = args.pyramid_flow
    if pyramid_flow is None and Path("/work/ref/pyramid-flow").is_dir():
        pyramid_flow = "/work/ref/pyramid-flow"
    if pyramid_flow == "none":
        pyramid_flow = None
    torch.manual_seed(0)
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
          f"device {args.device}, fp32")
    rows = run(args.reference, device=args.device, full_size=args.full_size, pyramid_flow=pyramid_flow)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(
            [dict(check=n, value=v, limit=lim, ok=o, note=t) for n, v, lim, o, t in rows], indent=2))
    failed = [r[0] for r in rows if not r[3]]
    print(f"\n{'ALL CHECKS PASSED' if not failed else 'FAILED: ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
