"""The Shapes compression chain's kept stage checkpoints (checkpoints/): safetensors only, loadable offline, and
still what their cards say they are."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from diffusers_neodragon import AsymmetricVAE, CausalVideoVAE
from diffusers_neodragon.data.shapes import ShapesVideoDataset
from diffusers_neodragon.pretrained import shapes_model_path
from diffusers_neodragon.training_utils import psnr


CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
DECODER = CHECKPOINTS / "shapes-distilled-decoder"


def test_stage_checkpoints_are_safetensors_with_cards():
    folders = [p for p in CHECKPOINTS.iterdir() if p.is_dir()]
    assert folders
    for folder in folders:
        assert (folder / "README.md").is_file()
        weights = [p for p in folder.rglob("*") if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}]
        assert weights and all(p.suffix == ".safetensors" for p in weights), folder


def test_distilled_decoder_keeps_the_teacher_encoder_and_reconstructs_held_out_clips():
    student = AsymmetricVAE.from_pretrained(DECODER / "vae", torch_dtype=torch.float32).eval()
    teacher_weights = load_file(str(Path(shapes_model_path()) / "vae" / "diffusion_pytorch_model.safetensors"))
    student_weights = load_file(str(DECODER / "vae" / "diffusion_pytorch_model.safetensors"))
    encoder = [k for k in student_weights if k.startswith(("encoder.", "quant_conv."))]
    assert encoder and all(torch.equal(student_weights[k], teacher_weights[k]) for k in encoder)
    teacher = CausalVideoVAE.from_pretrained(Path(shapes_model_path()) / "vae", torch_dtype=torch.float32)
    for name in ("image_latent_shift", "image_latent_scale", "video_latent_shift", "video_latent_scale"):
        assert student.config[name] == teacher.config[name]
    decoder_params = sum(p.numel() for m in (student.decoder, student.post_quant_conv) for p in m.parameters())
    teacher_params = sum(p.numel() for m in (teacher.decoder, teacher.post_quant_conv) for p in m.parameters())
    assert teacher_params >= 10 * decoder_params

    clips = ShapesVideoDataset(2, 49, 128, 128, seed=5, split="heldout")
    video = torch.stack([clips[i]["video"] for i in range(len(clips))])
    with torch.no_grad():
        latents = student.encode(video).latent_dist.mode()
        reconstruction = student.decode(latents).sample.clamp(-1, 1)
    assert psnr(reconstruction, video) > 28.0  # the card: 30.8 dB on 32 clips of 49 frames
