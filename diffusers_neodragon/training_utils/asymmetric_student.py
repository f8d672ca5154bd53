# SPDX-License-Identifier: Apache-2.0
"""The student of asymmetric decoder distillation: an ``AsymmetricVAE`` that carries a teacher VAE's encoder bit for
bit (so the latent space a transformer was trained on does not move) and a new tiny streaming decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.autoencoders import AsymmetricVAE


# What defines the latent space: copied from the teacher's config unchanged.
ENCODER_CONFIG_KEYS = (
    "in_channels", "latent_channels", "encoder_block_out_channels", "encoder_layers_per_block",
    "encoder_spatial_downsample", "encoder_temporal_downsample", "norm_num_groups", "act_fn", "dropout",
    "temporal_downsample_scale", "spatial_downsample_scale",
    "image_latent_shift", "image_latent_scale", "video_latent_shift", "video_latent_scale",
)
# The modules that make a latent from pixels: frozen and copied bitwise.
ENCODER_MODULES = ("encoder", "quant_conv")


def check_student_upsampling(
    time_upscale: Sequence[bool], space_upscale: Sequence[bool], temporal_scale: int, spatial_scale: int
) -> None:
    """Raise a ``ValueError`` naming the fix when the decoder's 2x stages do not undo the encoder's compression.

    The paper adds or removes decoder blocks until the decoder's ratio is the encoder's (8x8x8); here each stage
    either doubles time/space or not, so the counts of set flags must be log2 of the encoder's factors."""
    problems = []
    for what, flags, scale in (("time", time_upscale, temporal_scale), ("space", space_upscale, spatial_scale)):
        factor = 2 ** sum(bool(flag) for flag in flags)
        if factor != scale:
            problems.append(
                f"it upsamples {factor}x in {what} ({what}_upscale {tuple(int(bool(f)) for f in flags)}) but the "
                f"teacher's encoder compresses {scale}x"
            )
    if problems:
        raise ValueError(
            "The student decoder does not invert the teacher's encoder: " + "; ".join(problems) + ". Set "
            "--decoder_time_upscale / --decoder_space_upscale (one 0/1 flag per stage, len(num_features) - 1 "
            f"stages) so that 2**(number of 1s) is {temporal_scale} in time and {spatial_scale} in space."
        )


def build_student_vae(
    teacher,
    num_features: Sequence[int],
    blocks_per_stage: int | Sequence[int] = 3,
    time_upscale: Sequence[bool] | None = None,
    space_upscale: Sequence[bool] | None = None,
) -> AsymmetricVAE:
    """An ``AsymmetricVAE`` with ``teacher``'s encoder, posterior projection and latent constants (weights copied
    bitwise, config unchanged) and a freshly initialised tiny decoder of the given widths and MemBlock counts.

    The post-quant 1x1x1 conv (decoder side) starts as the teacher's and trains with the decoder. Upsampling flags
    default to "every stage doubles" (3 stages for 4 widths)."""
    config = teacher.config
    stages = len(num_features) - 1
    time_upscale = [True] * stages if time_upscale is None else list(time_upscale)
    space_upscale = [True] * stages if space_upscale is None else list(space_upscale)
    if not len(time_upscale) == len(space_upscale) == stages:
        raise ValueError(
            f"{len(num_features)} decoder widths make {stages} stages: give {stages} time and space upscale flags, "
            f"got {len(time_upscale)} and {len(space_upscale)}."
        )
    check_student_upsampling(time_upscale, space_upscale, config.temporal_downsample_scale,
                             config.spatial_downsample_scale)
    student = AsymmetricVAE(
        **{key: config[key] for key in ENCODER_CONFIG_KEYS},
        decoder_num_features=list(num_features),
        decoder_time_upscale=[bool(f) for f in time_upscale],
        decoder_space_upscale=[bool(f) for f in space_upscale],
        decoder_blocks_per_stage=blocks_per_stage if isinstance(blocks_per_stage, int) else list(blocks_per_stage),
    )
    initialize_decoder_(student.decoder)
    with torch.no_grad():
        for name in (*ENCODER_MODULES, "post_quant_conv"):
            getattr(student, name).load_state_dict(getattr(teacher, name).state_dict())
    freeze_encoder(student)
    return student if student.dtype == teacher.dtype else student.to(teacher.dtype)


def continue_student_vae(teacher, student) -> AsymmetricVAE:
    """An earlier student, to train further: checked to carry ``teacher``'s latent space bit for bit (a student of
    another teacher would decode the wrong latents), with its encoder frozen."""
    if not isinstance(student, AsymmetricVAE):
        raise ValueError(f"--student_init must hold an AsymmetricVAE, got {type(student).__name__}.")
    mine, theirs = encoder_state(student), {k: v for k, v in teacher.state_dict().items()
                                            if k.split(".", 1)[0] in ENCODER_MODULES}
    if mine.keys() != theirs.keys() or any(not torch.equal(mine[k], theirs[k].to(mine[k].dtype)) for k in mine):
        raise ValueError("--student_init's encoder is not the teacher's: it was distilled from another VAE. Give the "
                         "teacher it was distilled from, or start a fresh student.")
    freeze_encoder(student)
    return student


@torch.no_grad()
def initialize_decoder_(decoder: torch.nn.Module) -> None:
    """Unit-gain init of a tiny decoder trained from scratch: He-normal convs (ReLU gain), zero biases, and each
    MemBlock's last conv at zero so that every block starts as the identity. The library's reference init (normal,
    std 0.02) is calibrated for the released widths; through a narrow decoder it shrinks the output to ~1e-7 and
    the first hundreds of steps are spent growing it back."""
    from ..models.autoencoders.autoencoder_asymmetric import MemBlock  # noqa: PLC0415

    convs = [m for m in decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        if conv.bias is not None:
            torch.nn.init.zeros_(conv.bias)
    torch.nn.init.kaiming_normal_(convs[-1].weight, nonlinearity="linear")  # the output conv: no ReLU after it
    for block in decoder.modules():
        if isinstance(block, MemBlock):
            torch.nn.init.zeros_(block.conv[-1].weight)
            torch.nn.init.zeros_(block.conv[-1].bias)


def freeze_encoder(vae) -> None:
    """No gradient to the modules that define the latent space (encoder, posterior projection)."""
    for name in ENCODER_MODULES:
        getattr(vae, name).requires_grad_(False).eval()


def encoder_state(vae) -> dict[str, torch.Tensor]:
    """The state of the latent-space modules (for checking that distillation left them bitwise unchanged)."""
    return {k: v for k, v in vae.state_dict().items() if k.split(".", 1)[0] in ENCODER_MODULES}
