"""Speed and memory of the full-size Neodragon pipeline on one GPU, optionally beside the official code.

Builds every component at full size with random weights from configs (no download): 18-block width-1536 DiT,
DT5 + ContextAdapter, CLIP-L/G, AsymmetricVAE, an SSD-1B-sized SDXL first-frame pipeline (LCM, 4 steps) and
QuickSRNet. Times each component with CUDA events after warm-up, for hybrid 1-1-1 (49x320x512, then 2x SR to
640x1024) and monolithic, at batch 1 and 4, and reports peak memory and the DiT's achieved TFLOP/s.

CUDA graphs (``pipe.enable_cuda_graphs()``: the DiT, the text encoders, the first-frame UNet, the video VAE's
encoder and the first-frame VAE's decoder, all launch-bound at batch 1) are on unless ``--no-cuda-graphs``; the
max |graphed - eager| of each on one real call shape goes into ``info``. ``--fuse-qkv`` calls
``pipe.fuse_qkv_projections()`` first and records the fused against the separate outputs. ``--compile [PARTS]`` calls
``pipe.enable_torch_compile`` (all parts by default) and records each compiled part's output against its eager
output on one real call.

With ``--reference PATH`` (a local checkout of Qualcomm-AI-research/neodragon, never part of this repository) it
runs the same work through the official ``generate()`` on the same weights in the same process and prints the
speed-ups. ``--profile DIR`` runs torch.profiler over one hybrid batch-1 +SR generation (eagerly, and again with
CUDA graphs when they are on) and writes the top-40 kernel table and the CUDA kernels launched per component to
``DIR/profile.txt``. Hybrid batch 1 +SR then runs with the whole clip decoded at once (``decode_chunk_size=None``;
the pipeline streams one latent frame at a time by default) and, with ``--float8-weights``, with weights stored in
float8 (``--float8-matmuls``: and the DiT multiplying in float8).
``--offload`` finally moves the pipeline to the CPU, enables
model CPU offload (graphs off) and times hybrid batch 1 +SR again (end to end and peak GPU memory);
``--group-offload`` does the same with diffusers' leaf-level group offload on a CUDA stream. For every memory mode
one more run reports where the memory goes: what stays allocated between runs and the peak inside each component.
Output: a table on stdout and a JSON file.

    python benchmarks/benchmark_pipeline.py --reference /path/to/neodragon --json bench.json
    python benchmarks/benchmark_pipeline.py --batch-sizes 1 --skip-monolithic --profile prof --offload --group-offload
"""

import argparse
import bisect
import contextlib
import json
import math
import os
import re
import statistics
import sys
import time
import types
from collections import defaultdict

import torch


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from diffusers_neodragon.pipelines.neodragon.acceleration import COMPILABLE_PARTS  # noqa: E402


PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


# ----------------------------------------------------------------------------- components
def word_vocabulary():
    path = os.path.join(HERE, "..", "..", "shared", "data", "vbench_prompts.txt")
    text = open(path).read() if os.path.exists(path) else "a drone flying over a snowy forest at dawn"
    words = dict.fromkeys(re.findall(r"[a-z0-9]+", text.lower()))
    return list(words)


def build_pipeline(device, dtype, with_first_frame=True):
    from benchmarks import full_size
    from diffusers_neodragon import NeodragonPipeline
    from diffusers_neodragon.data.vocab_tokenizer import build_word_level_tokenizer

    words = word_vocabulary()

    def clip_tok():
        return build_word_level_tokenizer(words, full_size.CLIP_MAX_LENGTH, bos_token="<|startoftext|>",
                                          eos_token="<|endoftext|>")

    torch.manual_seed(0)
    with torch.device(device):
        components = full_size.pipeline_components(clip_tok, build_word_level_tokenizer(words, 128), with_first_frame)
    # Random weights: the SD3-style init of the reference would zero adaLN and output layers; keep them random
    # so no GEMM runs on zeros (as the official perf notes did).
    pipe = NeodragonPipeline(**components).to(device=device, dtype=dtype)
    # Modules built from configs start in training mode (T5's dropout would run); from_pretrained gives eval mode.
    for t2i in (pipe, pipe.first_frame_pipeline):
        if t2i is not None:
            t2i.set_progress_bar_config(disable=True)
            for component in t2i.components.values():
                if isinstance(component, torch.nn.Module):
                    component.eval()
    return pipe


def count_params(module):
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- timing
class EventLog:
    """Wraps callables to record CUDA events per label; resolved after one synchronize (no syncs in between)."""

    def __init__(self):
        self.events = []
        self.wrapped = []  # (obj, name, the instance attribute it replaced or None)
        self.active = True
        self.peaks = None  # {label: GiB} while `memory_by_component` runs

    def wrap(self, obj, name, label):
        original = getattr(obj, name)

        def timed(*args, **kwargs):
            if not self.active:
                return original(*args, **kwargs)
            event = label(*args, **kwargs) if callable(label) else label
            if self.peaks is not None:  # the allocator's statistics are host-side: no sync needed
                torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = original(*args, **kwargs)
            end.record()
            self.events.append((event, start, end))
            if self.peaks is not None:
                self.peaks[event] = max(self.peaks.get(event, 0.0), torch.cuda.max_memory_allocated() / 2**30)
            return out

        self.wrapped.append((obj, name, obj.__dict__.get(name)))
        setattr(obj, name, timed)
        return original

    def unwrap(self):
        """Put every wrapped callable back (before changing what a wrapped ``forward`` is: graphs, float8)."""
        for obj, name, previous in reversed(self.wrapped):
            if previous is None:
                delattr(obj, name)
            else:
                setattr(obj, name, previous)
        self.wrapped.clear()

    def totals(self):
        torch.cuda.synchronize()
        sums = defaultdict(float)
        for label, start, end in self.events:
            sums[label] += start.elapsed_time(end)
        self.events.clear()
        return dict(sums)


def dit_flops(layout_tokens, num_text, num_last, dim=1536, blocks=18):
    """Useful FLOPs of one forward: linear layers per stream plus attention as executed (dense per query group)."""
    n, s = layout_tokens, layout_tokens + num_text
    per_block = 2 * 12 * dim * dim * (n + num_text) + 4 * s * s * dim
    last = 2 * dim * dim * (num_last + 2 * n + 9 * num_last + 2 * num_text) + 4 * num_last * s * dim
    return per_block * (blocks - 1) + last


def dit_stage(pipe, hidden_states, full_width):
    """Pyramid stage of a DiT call, from the width of its noisy clip (``full_width`` latents at the last stage)."""
    return pipe.scheduler.config.stages - 1 - int(round(math.log2(full_width / hidden_states.shape[-1])))


def instrument(pipe, log, full_width):
    flops = defaultdict(float)

    def dit_label(*args, **kwargs):
        x = kwargs["hidden_states"]
        history = kwargs.get("history") or []
        stage = dit_stage(pipe, x, full_width)
        p = pipe.transformer.config.patch_size
        tokens = sum(c.shape[2] * (c.shape[3] // p) * (c.shape[4] // p) for c in [*history, x])
        last = x.shape[2] * (x.shape[3] // p) * (x.shape[4] // p)
        flops[f"dit_stage{stage}"] += x.shape[0] * dit_flops(tokens, kwargs["encoder_hidden_states"].shape[1], last)
        return f"dit_stage{stage}"

    log.wrap(pipe.transformer, "forward", dit_label)
    log.wrap(pipe, "encode_prompt", "text_encoding")
    log.wrap(pipe, "_first_frame_pixels", "first_frame_t2i")
    if pipe.first_frame_pipeline is not None:  # inside first_frame_t2i: its two big parts
        log.wrap(pipe.first_frame_pipeline.unet, "forward", "first_frame_unet")
        log.wrap(pipe.first_frame_pipeline.vae, "decode", "first_frame_vae_decode")
    log.wrap(pipe, "_encode_first_frame", "first_frame_encode")
    log.wrap(pipe.scheduler, "renoise", "renoise")
    log.wrap(pipe.vae.decoder, "forward", "decode")  # whole clips and streamed chunks alike
    log.wrap(pipe.super_resolution, "upscale_video", "super_resolution")
    return flops


def run_case(pipe, log, flops, name, repeats, **kwargs):
    """Median over ``repeats`` timed runs after one warm-up; per-component times from the median run."""
    log.active = True
    pipe(**kwargs)  # warm-up (and CUDA-graph capture when enabled)
    pipe(**kwargs)
    log.totals()
    flops.clear()
    runs = []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        pipe(**kwargs)
        end.record()
        parts = log.totals()
        parts["end_to_end"] = start.elapsed_time(end)
        runs.append(parts)
    runs.sort(key=lambda r: r["end_to_end"])
    median = runs[len(runs) // 2]
    dit_ms = sum(v for k, v in median.items() if k.startswith("dit_"))
    result = {
        "case": name, "ms": median, "end_to_end_ms_all": [r["end_to_end"] for r in runs],
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "dit_ms": dit_ms, "dit_tflop_per_run": sum(flops.values()) / repeats / 1e12,
    }
    stage_ms = median.get("dit_stage2", 0.0)
    if stage_ms:
        result["dit_stage2_tflops"] = flops["dit_stage2"] / repeats / (stage_ms / 1e3) / 1e12
    result["dit_tflops"] = sum(flops.values()) / repeats / (dit_ms / 1e3) / 1e12 if dit_ms else 0.0
    print(json.dumps({k: result[k] for k in ("case", "ms", "peak_memory_gib", "dit_tflops")}), flush=True)
    return result


def memory_by_component(pipe, log, **kwargs):
    """Where the peak memory goes: what stays allocated between runs (weights, graph pools) and the peak inside
    each component of one more run. Separate from `run_case`, whose whole-run peak these resets would hide."""
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated() / 2**30
    log.peaks = {}
    try:
        pipe(**kwargs)
        log.totals()
        peaks = log.peaks
    finally:
        log.peaks = None
    report = {"resident_gib": resident, "peak_gib_by_component": peaks}
    print(json.dumps(report), flush=True)
    return report


# ----------------------------------------------------------------------------- CUDA graphs
def graph_vs_eager(module, runner, args, kwargs, calls=4):
    """Max |output - eager output| over ``calls`` calls of ``module`` (eager, capture, replays) on the same inputs."""
    with torch.no_grad():
        # Clone: replayed outputs are static buffers that the next replay overwrites.
        outs = [first_tensor(module(*args, **kwargs)).float().clone() for _ in range(calls)]
        with runner.paused() if runner is not None else contextlib.nullcontext():
            eager = first_tensor(module(*args, **kwargs)).float()
    return max(float((o - eager).abs().max()) for o in outs)


def graph_runners(pipe):
    """Every CUDA-graph runner of the pipeline: the transformer's and those of the other graphed models."""
    from diffusers_neodragon.utils.cuda_graphs import module_cuda_graph_runner

    models = [*pipe._graphable_models().values(), *(part for part, _, _ in pipe._graphable_vae_parts().values())]
    runners = [module_cuda_graph_runner(m) for m in models]
    return [r for r in [pipe.transformer._cuda_graphs, *runners] if r is not None]


def text_graph_vs_eager(pipe, device, dtype, calls=4):
    """Max |graphed - eager| of the prompt features over ``calls`` calls: ours (token features and pooled vector)
    and the first-frame pipeline's (its two CLIPs' penultimate states and pooled vector)."""
    prompt = ["a red panda eating bamboo in a misty forest"]

    def features():
        ours = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, device=device, dtype=dtype)
        tensors = [ours[0], ours[2]]
        if pipe.first_frame_pipeline is not None:
            tensors += pipe.first_frame_pipeline.encode_prompt(
                prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)[::2]
        return [t.float().clone() for t in tensors]

    with torch.no_grad():
        outs = [features() for _ in range(calls)]
        with contextlib.ExitStack() as stack:
            for runner in graph_runners(pipe):
                stack.enter_context(runner.paused())
            eager = features()
    return max(float((o - e).abs().max()) for out in outs for o, e in zip(out, eager))


def first_tensor(output):
    return output if isinstance(output, torch.Tensor) else output[0]


def dit_probe_call(device, dtype):
    """One real DiT call shape: latent frame 6 at stage 2 (full 40x64 grid, pyramid history)."""
    g = torch.Generator(device).manual_seed(0)
    return (), dict(
        hidden_states=torch.randn(1, 16, 1, 40, 64, generator=g, device=device, dtype=dtype),
        history=[torch.randn(1, 16, 4, 10, 16, generator=g, device=device, dtype=dtype),
                 torch.randn(1, 16, 1, 20, 32, generator=g, device=device, dtype=dtype),
                 torch.randn(1, 16, 1, 40, 64, generator=g, device=device, dtype=dtype)],
        encoder_hidden_states=torch.randn(1, 24, 1536, generator=g, device=device, dtype=dtype),
        pooled_projections=torch.randn(1, 2048, generator=g, device=device, dtype=dtype),
        timestep=torch.tensor([386.0], device=device),
    )


def unet_probe_call(pipe, device, dtype, height=320, width=512):
    """One first-frame UNet call as StableDiffusionXLPipeline makes it in hybrid mode (batch 1, no CFG, LCM
    timestep, the image at twice the video size)."""
    t2i = pipe.first_frame_pipeline
    unet = t2i.unet
    g = torch.Generator(device).manual_seed(0)
    h, w = 2 * height // t2i.vae_scale_factor, 2 * width // t2i.vae_scale_factor
    args = (torch.randn(1, unet.config.in_channels, h, w, generator=g, device=device, dtype=dtype),
            torch.tensor(749, device=device))
    time_ids = torch.tensor([[2 * height, 2 * width, 0, 0, 2 * height, 2 * width]], device=device, dtype=dtype)
    kwargs = dict(
        encoder_hidden_states=torch.randn(1, 77, unet.config.cross_attention_dim, generator=g, device=device,
                                          dtype=dtype),
        timestep_cond=None, cross_attention_kwargs=None,
        added_cond_kwargs={"text_embeds": torch.randn(1, t2i.text_encoder_2.config.projection_dim, generator=g,
                                                      device=device, dtype=dtype), "time_ids": time_ids},
        return_dict=False,
    )
    return args, kwargs


def compile_probes(pipe, device, dtype, parts):
    """One real call of each compiled part, as a no-argument function: the DiT at stage 2, a first-frame UNet
    step and VAE decode at 640x1024, and the video VAE's encoding of a 320x512 first frame."""
    g = torch.Generator(device).manual_seed(0)
    t2i = pipe.first_frame_pipeline
    calls = {
        "transformer": (pipe.transformer, *dit_probe_call(device, dtype)),
        "first_frame_denoiser": (t2i.unet, *unet_probe_call(pipe, device, dtype)),
        "first_frame_vae_decoder": (
            t2i.vae.decode, (torch.randn(1, t2i.vae.config.latent_channels, 80, 128, generator=g, device=device,
                                         dtype=dtype),), {"return_dict": False}),
        "vae_encoder": (pipe.vae.encoder, (torch.randn(1, 3, 1, 320, 512, generator=g, device=device, dtype=dtype),),
                        {}),
    }
    assert set(calls) == set(COMPILABLE_PARTS)
    return {name: (lambda fn=fn, a=a, k=k: fn(*a, **k)) for name, (fn, a, k) in calls.items() if name in parts}


# ----------------------------------------------------------------------------- profiling
@contextlib.contextmanager
def profile_labels(pipe, full_width):
    """Wrap each component call in a ``record_function`` range named after it (undone on exit)."""
    patched = []

    def wrap(obj, name, label):
        previous = obj.__dict__.get(name)  # an instance attribute (a timing or graph wrapper) or None
        original = getattr(obj, name)

        def labelled(*args, **kwargs):
            with torch.profiler.record_function(label(*args, **kwargs) if callable(label) else label):
                return original(*args, **kwargs)

        setattr(obj, name, labelled)
        patched.append((obj, name, previous))

    wrap(pipe, "encode_prompt", "text_encoding")
    wrap(pipe, "_first_frame_pixels", "first_frame_t2i")
    if pipe.first_frame_pipeline is not None:
        wrap(pipe.first_frame_pipeline.unet, "forward", "first_frame_unet")
    wrap(pipe, "_encode_first_frame", "first_frame_encode")
    wrap(pipe.transformer, "forward",
         lambda *args, **kw: f"dit_stage{dit_stage(pipe, kw['hidden_states'], full_width)}")
    wrap(pipe.scheduler, "renoise", "renoise")
    wrap(pipe.vae, "decode", "decode")
    wrap(pipe.super_resolution, "upscale_video", "super_resolution")
    try:
        yield
    finally:
        for obj, name, previous in reversed(patched):
            if previous is None:
                delattr(obj, name)
            else:
                setattr(obj, name, previous)


PROFILE_LABELS = ("text_encoding", "first_frame_t2i", "first_frame_unet", "first_frame_encode", "dit_stage0",
                  "dit_stage1", "dit_stage2", "renoise", "decode", "super_resolution")


def kernels_per_label(events):
    """Per labelled range: calls, GPU kernels (incl. memcpy/memset) launched from inside it, their summed time,
    the CUDA launch API calls (cudaLaunchKernel & co.) and graph launches made inside it, and its CPU time."""
    from torch.autograd import DeviceType

    cpu = [e for e in events if e.device_type == DeviceType.CPU]
    launches, graph_launches = defaultdict(list), defaultdict(list)
    for e in cpu:
        if "GraphLaunch" in e.name:
            graph_launches[e.thread].append(e.time_range.start)
        elif "LaunchKernel" in e.name or "LaunchCooperativeKernel" in e.name:
            launches[e.thread].append(e.time_range.start)
    for starts in (*launches.values(), *graph_launches.values()):
        starts.sort()

    def count(starts, lo, hi):
        return bisect.bisect_right(starts, hi) - bisect.bisect_left(starts, lo)

    stats = {}
    for e in cpu:
        if e.name not in PROFILE_LABELS:
            continue
        s = stats.setdefault(e.name, dict(calls=0, kernels=0, kernel_ms=0.0, launch_api_calls=0, graph_launches=0,
                                          cpu_ms=0.0))
        lo, hi = e.time_range.start, e.time_range.end
        s["calls"] += 1
        s["cpu_ms"] += (hi - lo) / 1e3
        s["launch_api_calls"] += count(launches[e.thread], lo, hi)
        s["graph_launches"] += count(graph_launches[e.thread], lo, hi)
        stack = [e]
        while stack:  # kernels hang on the innermost op that launched them
            node = stack.pop()
            stack.extend(node.cpu_children)
            kernels = [k for k in node.kernels if k.name not in PROFILE_LABELS]  # not the GPU-side annotations
            s["kernels"] += len(kernels)
            s["kernel_ms"] += sum(k.duration for k in kernels) / 1e3
    for s in stats.values():
        s["kernels_per_call"] = s["kernels"] / s["calls"]
    return {label: stats[label] for label in PROFILE_LABELS if label in stats}


def profile_run(pipe, log, out_dir, full_width, **kwargs):
    """torch.profiler over one generation, eagerly and (when enabled) with CUDA graphs; writes DIR/profile.txt."""
    from torch.profiler import ProfilerActivity, profile

    os.makedirs(out_dir, exist_ok=True)
    log.active = False
    runners = graph_runners(pipe)
    modes = [("eager", True)] + ([("cuda_graphs", False)] if runners else [])
    report, text = {}, []
    for mode, pause in modes:
        with contextlib.ExitStack() as stack:
            for runner in runners if pause else ():
                stack.enter_context(runner.paused())
            stack.enter_context(profile_labels(pipe, full_width))
            pipe(**kwargs)  # warm-up in this mode
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                pipe(**kwargs)
                torch.cuda.synchronize()
        per_label = kernels_per_label(prof.events())
        report[mode] = per_label
        text.append(f"==== {mode}: hybrid 49x320x512 +SR batch 1 ====\n")
        text.append("per component (kernels = GPU kernels incl. memcpy/memset launched inside the range; nested "
                    "ranges such as first_frame_unet inside first_frame_t2i count in both; cpu ms = the range's "
                    "host time under the profiler, kernel ms = summed GPU time of its kernels)\n")
        text.append("label".ljust(20) + "calls".rjust(7) + "kernels".rjust(10) + "per call".rjust(10)
                    + "launch API".rjust(12) + "graph launch".rjust(14) + "cpu ms".rjust(10) + "kernel ms".rjust(11)
                    + "\n")
        for label, st in per_label.items():
            text.append(f"{label:20s}{st['calls']:7d}{st['kernels']:10d}{st['kernels_per_call']:10.0f}"
                        f"{st['launch_api_calls']:12d}{st['graph_launches']:14d}{st['cpu_ms']:10.1f}"
                        f"{st['kernel_ms']:11.1f}\n")
        text.append("\ntop 40 by CUDA time:\n")
        text.append(prof.key_averages().table(sort_by="device_time_total", row_limit=40) + "\n\n")
        print(json.dumps({"profile": mode, "kernels_per_call": {k: round(v["kernels_per_call"])
                                                                 for k, v in per_label.items()}}), flush=True)
    path = os.path.join(out_dir, "profile.txt")
    with open(path, "w") as f:
        f.writelines(text)
    log.active = True
    return {"path": path, **report}


# ----------------------------------------------------------------------------- official code
def import_official(path):
    """Import the official modules without its top-level __init__ (which loads the SSD-1B and hub code)."""
    sys.path.insert(0, path)
    package = types.ModuleType("neodragon")
    package.__path__ = [os.path.join(path, "neodragon")]
    sys.modules["neodragon"] = package
    stub = types.ModuleType("neodragon.first_frame_gen")
    stub.SSD1B_FirstFrameGeneratorPipeline = object
    sys.modules["neodragon.first_frame_gen"] = stub
    from neodragon.asymmetric_causal_video_vae import AsymmetricCausalVideoVAE
    from neodragon.context_adapter import ContextAdapter as OfficialAdapter
    from neodragon.pyramid_mmdit import PyramidMMDiT
    from neodragon.pyramid_scheduler import PyramidFlowMatchEulerDiscreteScheduler
    from neodragon.utils import generation_utils

    return dict(dit=PyramidMMDiT, vae=AsymmetricCausalVideoVAE, adapter=OfficialAdapter,
                scheduler=PyramidFlowMatchEulerDiscreteScheduler, gen=generation_utils)


def official_components(official, pipe, device, dtype):
    """The official classes holding exactly our weights."""
    with torch.device(device):
        dit = official["dit"]()
    missing, unexpected = dit.load_state_dict(pipe.transformer.state_dict(), strict=False)
    assert set(missing) == {"pos_embed.pos_embed"} and not unexpected, (missing, unexpected)
    with torch.device(device):
        vae = official["vae"]()
    vae.load_state_dict(pipe.vae.state_dict(), strict=True)
    with torch.device(device):
        adapter = official["adapter"]()
    ours = pipe.context_adapter.state_dict()
    mapped = {}
    layers = len(pipe.context_adapter.layers)
    for k, v in ours.items():
        head, _, rest = k.partition(".")
        if head == "layers":
            index, _, param = rest.partition(".")
            mapped[f"network_layers.{index}.1.{param}"] = v
        else:
            mapped[f"network_layers.{layers}.0.{rest}"] = v
    adapter.load_state_dict(mapped, strict=True)
    return [m.to(device=device, dtype=dtype).eval() for m in (dit, vae, adapter)] + [official["scheduler"]()]


def time_official(official, pipe, image, device, dtype, height, width, repeats, prompt):
    dit, vae, adapter, scheduler = official_components(official, pipe, device, dtype)
    with torch.no_grad():
        embeds, mask, pooled = encode_unadapted(pipe, prompt, device)

    def bundle(_prompt, _device):
        return embeds, mask, pooled

    gen = official["gen"]
    block_noise = gen._sample_block_noise
    try:
        block_noise(1 / 3, 1, 1, 1, 2, 2)
    except Exception:  # torch versions whose Cholesky rejects the singular covariance (see the facts sheet)
        def block_noise(gamma, bs, ch, temp, height, width, _dist=[]):
            if not _dist:
                cov = torch.eye(4) * (1 + gamma) - torch.ones(4, 4) * gamma + 1e-6 * torch.eye(4)
                _dist.append(torch.distributions.MultivariateNormal(torch.zeros(4), cov))
            noise = torch.stack([_dist[0].sample() for _ in range(bs * ch * temp * (height // 2) * (width // 2))])
            return noise.reshape(bs, ch, temp, height // 2, width // 2, 2, 2).permute(0, 1, 2, 3, 5, 4, 6).reshape(
                bs, ch, temp, height, width)
        gen._sample_block_noise = block_noise
    kwargs = dict(
        text_encoder_bundle=bundle, dit=dit, context_adapter=adapter, vae=vae, scheduler=scheduler, prompt=prompt,
        image=image, height=height, width=width, num_frames=49, num_inference_steps=[1, 1, 1],
        video_num_inference_steps=[1, 1, 1], do_classifier_free_guidance=False, guidance_scale=0.0,
        video_guidance_scale=0.0, output_type="latent", device=torch.device(device), dtype=dtype,
    )
    times, decode_times = [], []
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype), contextlib.redirect_stdout(open(os.devnull, "w")):
        gen.generate(**kwargs)
        for _ in range(repeats):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            latents = gen.generate(**kwargs)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            gen._decode_latent(vae, latents.clone(), return_tensor=True)
            torch.cuda.synchronize()
            decode_times.append((time.perf_counter() - t0) * 1e3)
    del dit, vae, adapter
    torch.cuda.empty_cache()
    return {"generate_ms": statistics.median(times), "decode_ms": statistics.median(decode_times),
            "generate_ms_all": times}


def encode_unadapted(pipe, prompt, device):
    tokens = pipe.tokenizer_3([prompt], padding="max_length", max_length=128, truncation=True, return_tensors="pt")
    embeds = pipe.text_encoder_3(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
    pooled = pipe._pooled_embeddings([prompt], device)
    return embeds.last_hidden_state, tokens.attention_mask.to(device), pooled


# ----------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", help="local checkout of the official Neodragon code")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--compile", nargs="?", const=",".join(COMPILABLE_PARTS), metavar="PARTS",
                        help="pipe.enable_torch_compile(PARTS), comma-separated (default: all of "
                             f"{','.join(COMPILABLE_PARTS)})")
    parser.add_argument("--compile-mode", help="torch.compile mode (default, or e.g. max-autotune-no-cudagraphs)")
    parser.add_argument("--skip-monolithic", action="store_true")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--json", default="benchmark_pipeline.json")
    parser.add_argument("--fuse-qkv", action="store_true",
                        help="pipe.fuse_qkv_projections() first: one multiply for the DiT's q, k and v")
    parser.add_argument("--profile", metavar="DIR",
                        help="torch.profiler over one hybrid batch-1 +SR run; writes DIR/profile.txt")
    parser.add_argument("--offload", action="store_true",
                        help="finally time hybrid batch-1 +SR with enable_model_cpu_offload() (graphs off)")
    parser.add_argument("--float8-weights", action="store_true",
                        help="then time hybrid batch-1 +SR with float8 weights (enable_float8_weights) and streamed "
                             "decode, and its output against the bf16 one; later cases keep the float8 weights")
    parser.add_argument("--float8-matmuls", action="store_true",
                        help="--float8-weights with enable_float8_weights(float8_matmuls=True): the DiT multiplies "
                             "in float8")
    parser.add_argument("--group-offload", action="store_true",
                        help="finally time hybrid batch-1 +SR with leaf-level group offload on a CUDA stream "
                             "(graphs off; after --offload when both are given)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("This benchmark needs a CUDA GPU.")
    device, dtype = "cuda", getattr(torch, args.dtype)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # diffusers 0.42 warns on every .to(dtype) ("kept in float32: []")
    torch.backends.cuda.matmul.allow_tf32 = True
    gpu = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)

    t0 = time.perf_counter()
    pipe = build_pipeline(device, dtype)
    info = {"gpu": gpu, "torch": torch.__version__, "dtype": args.dtype, "peak_bf16_tflops": peak,
            "params": {k: count_params(v) for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)},
            "build_s": time.perf_counter() - t0, "cuda_graphs": not args.no_cuda_graphs, "compile": args.compile,
            "compile_mode": args.compile_mode, "fuse_qkv": args.fuse_qkv}
    info["params"]["first_frame_unet"] = count_params(pipe.first_frame_pipeline.unet)
    if args.fuse_qkv:
        # Fused against separate projections on one real call of the DiT (eager).
        probes = compile_probes(pipe, device, dtype, ("transformer",))
        with torch.no_grad():
            separate = {name: first_tensor(fn()).float() for name, fn in probes.items()}
            pipe.fuse_qkv_projections()
            fused = {name: first_tensor(fn()).float() for name, fn in probes.items()}
        info["fused_vs_separate"] = {name: float((fused[name] - separate[name]).norm() / separate[name].norm())
                                     for name in probes}
        print(json.dumps({"fused_vs_separate_relative_l2": info["fused_vs_separate"]}), flush=True)
        del probes, separate, fused
    if args.compile:
        # Compiled vs eager on one real call shape of each compiled part (all eager, before any graph).
        parts = args.compile.split(",")
        probes = compile_probes(pipe, device, dtype, parts)
        with torch.no_grad():
            eager = {name: first_tensor(fn()).float() for name, fn in probes.items()}
        t0 = time.perf_counter()
        pipe.enable_torch_compile(parts, **({"mode": args.compile_mode} if args.compile_mode else {}))
        with torch.no_grad():
            compiled = {name: first_tensor(fn()).float() for name, fn in probes.items()}
        info["compile_s"] = time.perf_counter() - t0
        info["compiled_vs_eager"] = {
            name: {"max_abs_diff": float((compiled[name] - eager[name]).abs().max()),
                   "output_max_abs": float(eager[name].abs().max()),
                   "relative_l2": float((compiled[name] - eager[name]).norm() / eager[name].norm())}
            for name in probes}
        print(json.dumps({"compile_s": info["compile_s"], "compiled_vs_eager": info["compiled_vs_eager"]}), flush=True)
        del probes, eager, compiled
    if not args.no_cuda_graphs:
        pipe.enable_cuda_graphs()  # the DiT, the text encoders and the first-frame UNet (compiled forwards stay inside)

    # Eager vs graphed equality on one real call shape of each (DiT: u=6 stage 2; UNet: a 640x1024 LCM step).
    from diffusers_neodragon.utils.cuda_graphs import module_cuda_graph_runner

    probe_args, probe_kwargs = dit_probe_call(device, dtype)
    info["graph_vs_eager_max_abs_diff"] = graph_vs_eager(
        pipe.transformer, pipe.transformer._cuda_graphs, probe_args, probe_kwargs)
    unet = pipe.first_frame_pipeline.unet
    probe_args, probe_kwargs = unet_probe_call(pipe, device, dtype)
    info["first_frame_unet_graph_vs_eager_max_abs_diff"] = graph_vs_eager(
        unet, module_cuda_graph_runner(unet), probe_args, probe_kwargs)
    del probe_args, probe_kwargs, unet
    info["text_encoders_graph_vs_eager_max_abs_diff"] = text_graph_vs_eager(pipe, device, dtype)
    g = torch.Generator(device).manual_seed(0)
    t2i_vae = pipe.first_frame_pipeline.vae
    for name, module, sample in (
        ("vae_encoder", pipe.vae.encoder, torch.randn(1, 3, 1, 320, 512, generator=g, device=device, dtype=dtype)),
        ("first_frame_vae_decoder", t2i_vae.decoder,
         torch.randn(1, t2i_vae.config.latent_channels, 80, 128, generator=g, device=device, dtype=dtype)),
    ):
        info[f"{name}_graph_vs_eager_max_abs_diff"] = graph_vs_eager(
            module, module_cuda_graph_runner(module), (sample,), {})

    log = EventLog()
    flops = instrument(pipe, log, full_width=64)
    results = []
    prompt = "A drone flying over a snowy forest at dawn, cinematic"
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        prompts = [prompt] * batch
        results.append(run_case(pipe, log, flops, f"hybrid 49x320x512 +SR (640x1024) batch {batch}", args.repeats,
                                prompt=prompts, mode="hybrid", output_type="pt",
                                generator=torch.Generator(device).manual_seed(0)))
        results.append(run_case(pipe, log, flops, f"hybrid 49x320x512 no SR batch {batch}", args.repeats,
                                prompt=prompts, mode="hybrid", output_type="pt", super_resolution=False,
                                generator=torch.Generator(device).manual_seed(0)))
        if not args.skip_monolithic:
            results.append(run_case(pipe, log, flops, f"monolithic 49x320x512 batch {batch}", max(1, args.repeats // 2),
                                    prompt=prompts, mode="monolithic", output_type="pt", super_resolution=False,
                                    generator=torch.Generator(device).manual_seed(0)))

    reference = None
    if args.reference:
        official = import_official(args.reference)
        import numpy as np
        from PIL import Image

        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (640, 1024, 3), dtype=np.uint8))
        log.active = False
        reference = {}
        for height, width in ((320, 512), (640, 1024)):
            ours_ms = []
            for _ in range(args.repeats + 1):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                pipe(prompt, image=image, height=height, width=width, mode="hybrid", output_type="latent",
                     generator=torch.Generator(device).manual_seed(0))
                torch.cuda.synchronize()
                ours_ms.append((time.perf_counter() - t0) * 1e3)
            ref = time_official(official, pipe, image, device, dtype, height, width, max(2, args.repeats // 2), prompt)
            reference[f"{height}x{width}"] = {
                "official_generate_ms": ref["generate_ms"], "official_decode_ms": ref["decode_ms"],
                "official_generate_ms_all": ref["generate_ms_all"],
                "ours_generate_ms": statistics.median(ours_ms[1:]),
                "speedup_generate": ref["generate_ms"] / statistics.median(ours_ms[1:]),
            }
            print(json.dumps(reference), flush=True)

    generation = dict(prompt=[prompt], mode="hybrid", output_type="pt")
    memory = memory_by_component(pipe, log, generator=torch.Generator(device).manual_seed(0), **generation)
    profile = None
    if args.profile:
        profile = profile_run(pipe, log, args.profile, full_width=64,
                              generator=torch.Generator(device).manual_seed(0), **generation)

    # The whole clip decoded at once: the same video as the default streamed decode, at a higher peak.
    whole = dict(generation, decode_chunk_size=None)
    result = run_case(pipe, log, flops, "hybrid +SR batch 1 whole-clip decode", args.repeats,
                      generator=torch.Generator(device).manual_seed(0), **whole)
    result["memory"] = memory_by_component(pipe, log, generator=torch.Generator(device).manual_seed(0), **whole)
    results.append(result)

    if args.float8_weights or args.float8_matmuls:
        # Random weights give a nearly constant video, so the error of float8 weights is measured on one real call
        # of the DiT and of the first-frame UNet: relative L2 distance of the outputs to the bf16 ones.
        log.active = False
        dit_call = dit_probe_call(device, dtype)
        unet_call = unet_probe_call(pipe, device, dtype)
        unet = pipe.first_frame_pipeline.unet

        def probe_outputs():
            with torch.no_grad():
                return (first_tensor(pipe.transformer(*dit_call[0], **dit_call[1])).float(),
                        first_tensor(unet(*unet_call[0], **unet_call[1])).float())

        before = probe_outputs()
        log.unwrap()  # the graph runners are replaced under the timing wrappers
        saved = pipe.enable_float8_weights(float8_matmuls=args.float8_matmuls)
        flops = instrument(pipe, log, full_width=64)
        difference = {f"{name}_relative_l2_error": float((a - b).norm() / b.norm())
                      for name, a, b in zip(("dit", "first_frame_unet"), probe_outputs(), before)}
        print(json.dumps(difference), flush=True)
        del before, dit_call, unet_call, unet  # not counted in the peak below
        kind = "matmuls" if args.float8_matmuls else "weights"
        result = run_case(pipe, log, flops, f"hybrid +SR batch 1 float8 {kind}", args.repeats,
                          generator=torch.Generator(device).manual_seed(0), **generation)
        result["float8_saved_gib"] = saved / 2**30
        result["float8_vs_bf16"] = difference
        result["memory"] = memory_by_component(pipe, log, generator=torch.Generator(device).manual_seed(0),
                                               **generation)
        results.append(result)

    if args.offload:
        # Last, so that no other case sees offload hooks: graphs off (offload moves their weights), everything
        # back to the CPU, then diffusers' model offload (the first-frame pipeline included).
        log.unwrap()
        pipe.enable_cuda_graphs(False)
        flops = instrument(pipe, log, full_width=64)
        pipe.to("cpu")
        torch.cuda.empty_cache()
        pipe.enable_model_cpu_offload()
        result = run_case(pipe, log, flops, "hybrid 49x320x512 +SR batch 1 offload", args.repeats,
                          generator=torch.Generator(device).manual_seed(0), **generation)
        result["offload"] = True
        result["memory"] = memory_by_component(pipe, log, generator=torch.Generator(device).manual_seed(0),
                                               **generation)
        results.append(result)

    if args.group_offload:
        log.unwrap()
        pipe.remove_all_hooks()
        pipe.enable_cuda_graphs(False)
        flops = instrument(pipe, log, full_width=64)
        pipe.to("cpu")
        torch.cuda.empty_cache()
        pipe.enable_group_offload(torch.device(device), offload_type="leaf_level", use_stream=True)
        result = run_case(pipe, log, flops, "hybrid 49x320x512 +SR batch 1 group offload", args.repeats,
                          generator=torch.Generator(device).manual_seed(0), **generation)
        result["offload"] = "group, leaf level, stream"
        result["memory"] = memory_by_component(pipe, log, generator=torch.Generator(device).manual_seed(0),
                                               **generation)
        results.append(result)

    report = {"info": info, "results": results, "memory": memory, "reference": reference, "profile": profile}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print_table(report)


def print_table(report):
    info = report["info"]
    print(f"\n{info['gpu']} | torch {info['torch']} | {info['dtype']} | cuda graphs {info['cuda_graphs']} | "
          f"compile {info['compile']} | graph-vs-eager max|diff| DiT {info['graph_vs_eager_max_abs_diff']:.2e}, "
          f"first-frame UNet {info.get('first_frame_unet_graph_vs_eager_max_abs_diff', 0.0):.2e}, "
          f"text encoders {info.get('text_encoders_graph_vs_eager_max_abs_diff', 0.0):.2e}, "
          f"VAE encoder {info.get('vae_encoder_graph_vs_eager_max_abs_diff', 0.0):.2e}, "
          f"first-frame VAE decoder {info.get('first_frame_vae_decoder_graph_vs_eager_max_abs_diff', 0.0):.2e}"
          + "".join(f" | compiled vs eager {name}: max|diff| {d['max_abs_diff']:.2e} (output max|x| "
                    f"{d['output_max_abs']:.2e}), relative L2 {d['relative_l2']:.2e}"
                    for name, d in info.get("compiled_vs_eager", {}).items()))
    keys = ["text_encoding", "first_frame_t2i", "first_frame_unet", "first_frame_vae_decode", "first_frame_encode",
            "dit_stage0", "dit_stage1", "dit_stage2",
            "renoise", "decode", "super_resolution", "end_to_end"]
    labels = [k.replace("first_frame_", "ff_")[:12] for k in keys]
    print("case".ljust(46) + "".join(label.rjust(13) for label in labels) + "  peakGiB  DiT TF/s  s2 TF/s")
    for r in report["results"]:
        row = r["case"].ljust(46) + "".join(f"{r['ms'].get(k, 0.0):13.1f}" for k in keys)
        row += f"  {r['peak_memory_gib']:7.2f}  {r['dit_tflops']:8.1f}  {r.get('dit_stage2_tflops', 0):7.1f}"
        print(row)
    memories = [("default", report["memory"])] + [(r["case"], r["memory"]) for r in report["results"] if "memory" in r]
    print("\nmemory, GiB: resident between runs | peak inside each component")
    for name, memory in memories:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in memory["peak_gib_by_component"].items())
        print(f"  {name}: {memory['resident_gib']:.2f} | {parts}")
    if report.get("profile"):
        print(f"\nprofile: {report['profile']['path']}; CUDA kernels per call:")
        for mode in ("eager", "cuda_graphs"):
            if mode in report["profile"]:
                per_call = ", ".join(f"{k} {v['kernels_per_call']:.0f}" for k, v in report["profile"][mode].items())
                print(f"  {mode}: {per_call}")
    if report["reference"]:
        print("\nofficial generate() (hybrid, DiT loop + first-frame encode) vs ours, same weights, ms:")
        for size, ref in report["reference"].items():
            print(f"  {size}: official {ref['official_generate_ms']:.1f} (+decode {ref['official_decode_ms']:.1f}) "
                  f"| ours {ref['ours_generate_ms']:.1f} | speed-up x{ref['speedup_generate']:.1f}")


if __name__ == "__main__":
    main()
