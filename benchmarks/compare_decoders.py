"""Teacher vs distilled decoder: reconstruction quality, decode latency, peak memory, parameters.

    python benchmarks/compare_decoders.py TEACHER STUDENT [--clips 8] [--frames 49] [--size 128] [--device cuda]
                                          [--video_folder DIR] [--repeats 3] [--json out.json]

TEACHER and STUDENT are VAE folders, run folders or pipeline folders (``vae/``). Both decoders decode the same
latents: the teacher encoder's posterior mean of held-out clips (Shapes "heldout" split from seeds no training run
uses, or the clips of ``--video_folder``); a student whose encoder differs from the teacher's is reported (its
latent space moved). Prints, per decoder:

- PSNR (dB) and SSIM against the clips, and the student's PSNR against the teacher's reconstruction;
- decode latency of one clip, whole (``decode``) and streamed one latent frame at a time (``iter_decode``), median
  of ``--repeats`` after a warm-up;
- peak memory of those decodes beyond the weights and latents: on CUDA ``torch.cuda.max_memory_allocated``; on the
  CPU the peak of live tensor storage counted by a dispatch mode (the same quantity for the CPU allocator);
- parameters of the decoder (with its post-quant conv).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from diffusers_neodragon.training_utils import count_parameters, load_vae_folder, psnr
from diffusers_neodragon.training_utils.perceptual import ssim


HELDOUT_SEED = 31_337


class CpuPeakMemory(TorchDispatchMode):
    """Peak bytes of CPU tensor storage alive at once among the storages created inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._tracked: dict = {}

    def _release(self, key, size):
        self.live -= size
        self._tracked.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                key = (storage.data_ptr(), storage.nbytes())
                if key in self._tracked:
                    continue
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                self._tracked[key] = weakref.finalize(storage, self._release, key, storage.nbytes())
        return out


def decoder_parameters(vae) -> int:
    return count_parameters(vae.decoder) + count_parameters(vae.post_quant_conv)


def held_out_clips(args) -> torch.Tensor:
    if args.video_folder:
        from diffusers_neodragon.data.video_folder import VideoFolderDataset  # noqa: PLC0415

        dataset = VideoFolderDataset(args.video_folder, args.frames, args.size, args.size)
        count = min(args.clips, len(dataset))
    else:
        from diffusers_neodragon.data.shapes import ShapesVideoDataset  # noqa: PLC0415

        dataset = ShapesVideoDataset(args.clips, args.frames, args.size, args.size, seed=HELDOUT_SEED, split="heldout")
        count = args.clips
    return torch.stack([dataset[i]["video"] for i in range(count)])


def _frames(video: torch.Tensor) -> torch.Tensor:
    return video.transpose(1, 2).flatten(0, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_decode(vae, latents: torch.Tensor, streamed: bool, repeats: int) -> dict[str, float]:
    """Median seconds and peak extra bytes of decoding ``latents`` (one clip) whole or one latent frame at a time."""
    device = latents.device

    def run():
        if streamed:
            out = None
            for chunk in vae.iter_decode(latents, decode_chunk_size=1):
                out = chunk  # frames are handed on, as a player or the SR net would take them
            return out
        return vae.decode(latents).sample

    run()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        with CpuPeakMemory() as tracker:
            run()
        peak = tracker.peak
    return {"seconds": statistics.median(times), "peak_mib": peak / 2**20}


@torch.no_grad()
def compare(teacher_folder: str, student_folder: str, args) -> dict:
    device = torch.device(args.device)
    teacher = load_vae_folder(teacher_folder, torch.float32).to(device).eval()
    student = load_vae_folder(student_folder, torch.float32).to(device).eval()
    teacher_encoder = {k: v for k, v in teacher.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
    student_state = student.state_dict()
    same_encoder = all(k in student_state and torch.equal(student_state[k], v) for k, v in teacher_encoder.items())
    clips = held_out_clips(args)
    latents, recon = [], {"teacher": [], "student": []}
    for clip in clips.split(1):
        z = teacher.encode(clip.to(device)).latent_dist.mode()
        latents.append(z)
        recon["teacher"].append(teacher.decode(z).sample.float().cpu())
        recon["student"].append(student.decode(z).sample.float().cpu())
    recon = {k: torch.cat(v) for k, v in recon.items()}
    result = {"device": str(device), "clips": len(clips), "frames": args.frames, "size": args.size,
              "same_encoder": same_encoder, "decoders": {}}
    for name, vae in (("teacher", teacher), ("student", student)):
        figures = {
            "psnr": psnr(recon[name], clips),
            "ssim": float(ssim(_frames(recon[name].clamp(-1, 1)), _frames(clips)).mean()),
            "parameters": decoder_parameters(vae),
        }
        for mode in ("whole", "streamed"):
            measured = measure_decode(vae, latents[0], streamed=mode == "streamed", repeats=args.repeats)
            figures[f"{mode}_seconds"], figures[f"{mode}_peak_mib"] = measured["seconds"], measured["peak_mib"]
        result["decoders"][name] = figures
    result["student_psnr_vs_teacher"] = psnr(recon["student"], recon["teacher"].clamp(-1, 1))
    teacher_figures, student_figures = result["decoders"]["teacher"], result["decoders"]["student"]
    result["psnr_gap_db"] = teacher_figures["psnr"] - student_figures["psnr"]
    result["parameter_ratio"] = teacher_figures["parameters"] / student_figures["parameters"]
    return result


def format_table(result: dict) -> str:
    rows = [f"{result['clips']} held-out clips of {result['frames']}x{result['size']}x{result['size']} on "
            f"{result['device']}; same encoder: {result['same_encoder']}",
            f"{'decoder':<8} {'params':>10} {'PSNR dB':>8} {'SSIM':>7} {'whole s':>9} {'whole MiB':>10} "
            f"{'stream s':>9} {'stream MiB':>11}"]
    for name, f in result["decoders"].items():
        rows.append(f"{name:<8} {f['parameters']:>10,} {f['psnr']:>8.2f} {f['ssim']:>7.4f} {f['whole_seconds']:>9.4f} "
                    f"{f['whole_peak_mib']:>10.1f} {f['streamed_seconds']:>9.4f} {f['streamed_peak_mib']:>11.1f}")
    rows.append(f"student vs teacher PSNR {result['student_psnr_vs_teacher']:.2f} dB; gap to teacher "
                f"{result['psnr_gap_db']:+.2f} dB; teacher/student decoder parameters "
                f"{result['parameter_ratio']:.1f}x")
    return "\n".join(rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher")
    parser.add_argument("student")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--video_folder", type=str, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=str, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = compare(args.teacher, args.student, args)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
