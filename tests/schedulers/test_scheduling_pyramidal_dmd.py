"""Tests for PyramidalDMDScheduler: the numbers of the official scheduler, the stage-jump and block-noise
math, training targets, determinism and config round trips. Comparisons with the official Neodragon code
run only where a checkout sits at /work/ref/neodragon (they are skipped elsewhere)."""

import importlib.util
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from diffusers_neodragon.schedulers.scheduling_pyramidal_dmd import (
    PyramidalDMDScheduler,
    PyramidalDMDSchedulerOutput,
)


REF_PACKAGE = Path("/work/ref/neodragon/neodragon")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def up2(x):
    return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def block_vectors(noise):
    """[B, C, T, H, W] -> [N, 4]: the four values of every 2x2 block."""
    b, c, t, h, w = noise.shape
    blocks = noise.reshape(b, c, t, h // 2, 2, w // 2, 2).permute(0, 1, 2, 3, 5, 4, 6)
    return blocks.reshape(-1, 4).double()


def block_covariance(gamma):
    """The covariance the reference gives torch.distributions.MultivariateNormal."""
    return torch.eye(4, dtype=torch.float64) * (1 + gamma) - torch.ones(4, 4, dtype=torch.float64) * gamma


@pytest.fixture
def scheduler():
    return PyramidalDMDScheduler()


@pytest.fixture
def ref_scheduler():
    sys.path.insert(0, str(REF_PACKAGE))
    try:
        import pyramid_scheduler
    except Exception as error:  # noqa: BLE001 - any failure means "no reference here"
        pytest.skip(f"official Neodragon scheduler not importable: {error}")
    finally:
        sys.path.remove(str(REF_PACKAGE))
    return pyramid_scheduler.PyramidFlowMatchEulerDiscreteScheduler()


@pytest.fixture
def ref_generation(monkeypatch):
    """The official generation_utils module, its heavy sibling imports (DiT, VAE, SSD-1B, ...) stubbed out."""
    path = REF_PACKAGE / "utils" / "generation_utils.py"
    if not path.exists():
        pytest.skip("official Neodragon checkout not found")
    sys.path.insert(0, str(REF_PACKAGE))
    try:
        import pyramid_scheduler
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"official Neodragon scheduler not importable: {error}")
    finally:
        sys.path.remove(str(REF_PACKAGE))
    stubs = {
        "neodragon": {},
        "neodragon.asymmetric_causal_video_vae": {"AsymmetricCausalVideoVAE": object},
        "neodragon.context_adapter": {"ContextAdapter": object},
        "neodragon.first_frame_gen": {"SSD1B_FirstFrameGeneratorPipeline": object},
        "neodragon.pyramid_mmdit": {"PyramidMMDiT": object},
        "neodragon.text_encoder_bundle": {"TextEncoderBundle": object},
        "neodragon.utils": {"Timer": object},
        "neodragon.pyramid_scheduler": {
            "PyramidFlowMatchEulerDiscreteScheduler": pyramid_scheduler.PyramidFlowMatchEulerDiscreteScheduler
        },
    }
    for name, attributes in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    try:
        spec = importlib.util.spec_from_file_location("ref_neodragon_generation_utils", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"official generation_utils not importable: {error}")
    return module


# ---------------------------------------------------------------------------------------------- numbers


def test_class_basics(scheduler):
    assert PyramidalDMDScheduler.order == 1
    assert PyramidalDMDScheduler._compatibles == ["PyramidalDMDScheduler"]
    assert len(scheduler) == 1000
    assert scheduler.config.stage_range == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])


def test_stage_sigmas_match_fact_sheet(scheduler):
    assert scheduler.original_start_sigmas == pytest.approx([1.0, 0.667, 0.334], abs=1e-12)
    assert scheduler.start_sigmas == pytest.approx([1.0, 0.80024, 0.50075], abs=1e-5)
    assert scheduler.end_sigmas == pytest.approx([0.667, 0.334, 0.0], abs=1e-12)
    assert scheduler.renoise_coefficients[0] is None
    assert scheduler.renoise_coefficients[1] == pytest.approx((0.59988, 0.69303), abs=1e-5)
    assert scheduler.renoise_coefficients[2] == pytest.approx((0.74963, 0.43366), abs=1e-5)
    ratios = [bound for pair in scheduler.timestep_ratios for bound in pair]
    assert ratios == pytest.approx([0.0, 0.256156, 0.256156, 0.614805, 0.614805, 1.0], abs=1e-6)


@pytest.mark.parametrize("gamma", [1 / 3, 0.25, 0.1])
def test_corrected_start_sigma_independent_derivation(gamma):
    """Re-derive the stage jump: after alpha * up2(a * clean + (1 - a) * noise) + beta * block_noise the
    block correlation of the upsampled noise must cancel and signal + noise std must sum to one."""
    scheduler = PyramidalDMDScheduler(gamma=gamma)
    for stage in range(1, 3):
        a = 1.0 - scheduler.end_sigmas[stage - 1]
        alpha, beta = scheduler.renoise_coefficients[stage]
        covariance = alpha**2 * (1 - a) ** 2 * torch.ones(4, 4, dtype=torch.float64) + beta**2 * block_covariance(gamma)
        noise_std = math.sqrt(covariance[0, 0].item())
        torch.testing.assert_close(covariance, noise_std**2 * torch.eye(4, dtype=torch.float64))
        assert alpha * a + noise_std == pytest.approx(1.0, abs=1e-12)
        assert scheduler.start_sigmas[stage] == pytest.approx(noise_std, abs=1e-12)
        if gamma == 1 / 3:  # the reference's comment: s = 2e / (1 + e) with e the previous stage's end sigma
            e = scheduler.end_sigmas[stage - 1]
            assert scheduler.start_sigmas[stage] == pytest.approx(2 * e / (1 + e), abs=1e-12)


def test_training_grids(scheduler):
    expected_ends = [(1000.0, 744.256), (744.0, 386.358), (386.0, 1.385)]
    for stage, (first, last) in enumerate(expected_ends):
        timesteps = scheduler.timesteps_per_stage[stage]
        assert timesteps.shape == (1000,) and timesteps.dtype == torch.float32
        assert timesteps[0].item() == pytest.approx(first, abs=1e-4)
        assert timesteps[-1].item() == pytest.approx(last, abs=1e-4)
        assert bool((timesteps[1:] < timesteps[:-1]).all())
        sigmas = scheduler.sigmas_per_stage[stage]
        torch.testing.assert_close(sigmas, 1.0 - torch.arange(1000, dtype=torch.float32) / 1000)


def test_set_timesteps_hybrid_one_step_per_stage(scheduler):
    scheduler.set_timesteps([1, 1, 1])
    assert scheduler.timesteps.tolist() == [1000.0, 744.0, 386.0]
    assert [t.tolist() for t in scheduler.stage_timesteps] == [[1000.0], [744.0], [386.0]]
    assert [s.tolist() for s in scheduler.stage_sigmas] == [[1.0, 0.0]] * 3
    assert all(t.dtype == torch.float32 for t in scheduler.stage_timesteps + scheduler.stage_sigmas)


def test_set_timesteps_multistep(scheduler):
    scheduler.set_timesteps(20)
    sigmas_20 = [1.0 - i * 0.999 / 19 for i in range(20)] + [0.0]
    assert scheduler.stage_sigmas[0].tolist()[:3] == pytest.approx([1.0, 0.947421, 0.894842], abs=1e-6)
    for stage in range(3):
        torch.testing.assert_close(scheduler.stage_sigmas[stage], torch.tensor(sigmas_20, dtype=torch.float32))
    assert scheduler.stage_timesteps[0][1].item() == pytest.approx(986.5398, abs=1e-3)
    assert scheduler.stage_timesteps[2][-1].item() == pytest.approx(1.385, abs=1e-4)
    assert scheduler.timesteps.shape == (60,)

    scheduler.set_timesteps(10)
    expected = [1.0, 0.889, 0.778, 0.667, 0.556, 0.445, 0.334, 0.223, 0.112, 0.001, 0.0]
    for stage in range(3):
        torch.testing.assert_close(scheduler.stage_sigmas[stage], torch.tensor(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(scheduler.timesteps, torch.cat(scheduler.stage_timesteps))

    scheduler.set_timesteps([2, 3, 4], device="cpu")
    assert [len(t) for t in scheduler.stage_timesteps] == [2, 3, 4]
    assert [len(s) for s in scheduler.stage_sigmas] == [3, 4, 5]
    assert scheduler.num_inference_steps == [2, 3, 4]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3", [1, 1], [1, 0, 1], [1, 1.0, 1], None])
def test_set_timesteps_rejects_bad_steps(scheduler, bad):
    with pytest.raises(ValueError, match="int >= 1 or a list of 3 ints >= 1"):
        scheduler.set_timesteps(bad)


# ------------------------------------------------------------------------------------ official reference


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 warning inside the reference
def test_matches_reference_scheduler(scheduler, ref_scheduler):
    assert scheduler.start_sigmas == pytest.approx(list(ref_scheduler.start_sigmas.values()), abs=1e-6)
    assert scheduler.end_sigmas == pytest.approx(list(ref_scheduler.end_sigmas.values()), abs=1e-6)
    assert scheduler.original_start_sigmas == pytest.approx(list(ref_scheduler.orig_start_sigmas.values()), abs=1e-6)
    for stage in range(3):
        torch.testing.assert_close(
            scheduler.timesteps_per_stage[stage].double(), ref_scheduler.timesteps_per_stage[stage].double(),
            atol=1e-3, rtol=0,
        )
        torch.testing.assert_close(
            scheduler.sigmas_per_stage[stage].double(), ref_scheduler.sigmas_per_stage[stage].double(),
            atol=1e-6, rtol=0,
        )
    for steps in (1, 4, 10, 20):
        scheduler.set_timesteps(steps)
        for stage in range(3):
            ref_t = ref_scheduler.get_stage_timesteps(steps, stage)
            ref_s = ref_scheduler.get_stage_sigmas(steps, stage)
            torch.testing.assert_close(scheduler.stage_timesteps[stage].double(), ref_t.double(), atol=1e-3, rtol=0)
            torch.testing.assert_close(scheduler.stage_sigmas[stage].double(), ref_s.double(), atol=1e-7, rtol=0)
    scheduler.set_timesteps(1)
    for stage, expected in enumerate([1000.0, 744.0, 386.0]):
        assert ref_scheduler.get_stage_timesteps(1, stage).tolist() == [expected]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_matches_reference(scheduler, ref_scheduler, dtype):
    sample = torch.randn(2, 4, 1, 6, 8, generator=gen(0)).to(dtype)
    model_output = torch.randn(2, 4, 1, 6, 8, generator=gen(1)).to(dtype)
    sigma, sigma_next = torch.tensor(0.9474).to(dtype), torch.tensor(0.8948).to(dtype)
    ours = scheduler.euler_step(model_output, sample, sigma, sigma_next).prev_sample
    ref = ref_scheduler.step(model_output=model_output, sigma=sigma, sigma_next=sigma_next, sample=sample).prev_sample
    assert ours.dtype == ref.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(ours, ref, atol=0, rtol=0)
    else:  # the reference multiplies in bf16; we keep (sigma_next - sigma) * v in float32, so allow 1 bf16 ulp
        torch.testing.assert_close(ours, ref, atol=1e-2, rtol=1e-2)


def test_pyramid_and_noise_downsampling_match_reference(scheduler, ref_generation):
    latents = torch.randn(2, 4, 3, 16, 24, generator=gen(0))
    for ours, ref in zip(scheduler.pyramid(latents), ref_generation._get_pyramid_latent(latents, 3)):
        torch.testing.assert_close(ours, ref, atol=0, rtol=0)
    noise = torch.randn(1, 4, 3, 16, 24, generator=gen(1))
    torch.testing.assert_close(
        scheduler.downsample_noise(noise, 2), ref_generation._downsample_noise_2x(noise, 2), atol=0, rtol=0
    )


@pytest.mark.parametrize("num_frames", [1, 2, 3, 4, 6])
def test_history_conditions_match_reference(scheduler, ref_generation, num_frames):
    frames = [torch.randn(1, 4, 1, 16, 16, generator=gen(k)) for k in range(num_frames)]
    ref = ref_generation._prepare_past_condition_latents(frames, 3, do_classifier_free_guidance=False)
    history = torch.cat(frames, dim=2)
    for stage in range(3):
        ours = scheduler.history_conditions(history, stage)
        assert [c.shape for c in ours] == [c.shape for c in ref[stage]]
        for mine, theirs in zip(ours, ref[stage]):
            torch.testing.assert_close(mine, theirs, atol=0, rtol=0)


@pytest.mark.parametrize("stage", [1, 2])
def test_renoise_matches_reference_given_the_same_block_noise(scheduler, ref_generation, monkeypatch, stage):
    def reference_noise(gamma, bs, ch, temp, height, width):
        assert gamma == scheduler.config.gamma
        return scheduler.block_noise((bs, ch, temp, height, width), generator=gen(7))

    monkeypatch.setattr(ref_generation, "_sample_block_noise", reference_noise)
    sample = torch.randn(2, 4, 1, 5, 8, generator=gen(3))
    ref = ref_generation._upsample_pyramidal_latent(
        sample,
        orig_sigma=1 - scheduler.original_start_sigmas[stage],  # the reference passes the signal coefficient
        gamma=scheduler.config.gamma,
        device=sample.device,
        dtype=sample.dtype,
    )
    torch.testing.assert_close(scheduler.renoise(sample, stage, generator=gen(7)), ref, atol=1e-6, rtol=1e-6)


def test_block_noise_distribution_matches_reference_sampler(scheduler, ref_generation):
    """The reference draws each 2x2 block from MultivariateNormal(0, (1 + g) I - g 11^T) in a Python loop.
    At g = 1/3 that covariance is singular and torch's Cholesky may reject it, so compare at g = 0.25."""
    gamma = 0.25
    torch.manual_seed(0)
    ref = ref_generation._sample_block_noise(gamma, 1, 4, 1, 64, 64)  # 4096 blocks
    ours = PyramidalDMDScheduler(gamma=gamma).block_noise((1, 4, 1, 64, 64), generator=gen(0))
    assert ref.shape == ours.shape
    for sample in (ref, ours):
        torch.testing.assert_close(torch.cov(block_vectors(sample).T), block_covariance(gamma), atol=0.08, rtol=0)


# --------------------------------------------------------------------------------------------- noise


@pytest.mark.parametrize("gamma", [1 / 3, 0.25])
def test_block_noise_statistics(gamma):
    scheduler = PyramidalDMDScheduler(gamma=gamma)
    noise = scheduler.block_noise((4, 4, 4, 64, 64), generator=gen(0))  # 65,536 blocks
    assert noise.dtype == torch.float32
    vectors = block_vectors(noise)
    covariance = torch.cov(vectors.T)
    torch.testing.assert_close(covariance, block_covariance(gamma), atol=0.03, rtol=0)
    if gamma == 1 / 3:  # rank 3: every block sums to zero
        assert vectors.sum(dim=1).abs().max().item() < 1e-5
    else:
        assert vectors.sum(dim=1).var().item() == pytest.approx(4 - 12 * gamma, rel=0.05)
    # neighbours in different blocks (columns 1 and 2, rows 1 and 2) are independent
    flat = noise.double()
    across_w = (flat[..., 1::2][..., :-1] * flat[..., 2::2]).mean().item()
    across_h = (flat[..., 1::2, :][..., :-1, :] * flat[..., 2::2, :]).mean().item()
    assert abs(across_w) < 0.02 and abs(across_h) < 0.02
    # compare with samples of the distribution the reference uses (PSD case only; see previous test)
    if gamma < 1 / 3:
        mvn = torch.distributions.MultivariateNormal(torch.zeros(4, dtype=torch.float64), block_covariance(gamma))
        reference = mvn.sample((65536,))
        torch.testing.assert_close(covariance, torch.cov(reference.T), atol=0.04, rtol=0)


def test_block_noise_determinism_and_generators(scheduler):
    shape = (2, 3, 2, 4, 6)
    a = scheduler.block_noise(shape, generator=gen(1))
    assert torch.equal(a, scheduler.block_noise(shape, generator=gen(1)))
    assert not torch.equal(a, scheduler.block_noise(shape, generator=gen(2)))
    per_sample = scheduler.block_noise(shape, generator=[gen(5), gen(6)])
    assert torch.equal(per_sample[1:], scheduler.block_noise((1, *shape[1:]), generator=gen(6)))
    half = scheduler.block_noise(shape, generator=gen(1), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half, a.to(torch.bfloat16))
    with pytest.raises(ValueError, match="one per sample"):
        scheduler.block_noise(shape, generator=[gen(1), gen(2), gen(3)])


@pytest.mark.parametrize("shape", [(1, 2, 1, 5, 4), (1, 2, 1, 4, 3), (2, 4, 4), (1, 2, 3, 4, 4, 4)])
def test_block_noise_rejects_bad_shapes(scheduler, shape):
    with pytest.raises(ValueError, match="even H and W"):
        scheduler.block_noise(shape)


@pytest.mark.parametrize("stage", [1, 2])
def test_renoise_is_alpha_up_plus_beta_block_noise(scheduler, stage):
    sample = torch.randn(2, 4, 3, 5, 8, generator=gen(0))
    alpha, beta = scheduler.renoise_coefficients[stage]
    expected = alpha * up2(sample) + beta * scheduler.block_noise((2, 4, 3, 10, 16), generator=gen(9))
    out = scheduler.renoise(sample, stage, generator=gen(9))
    assert out.shape == (2, 4, 3, 10, 16)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert torch.equal(out, scheduler.renoise(sample, stage, generator=gen(9)))
    assert not torch.equal(out, scheduler.renoise(sample, stage, generator=gen(10)))
    assert scheduler.renoise(sample.bfloat16(), stage, generator=gen(9)).dtype == torch.bfloat16


@pytest.mark.parametrize("stage", [1, 2])
def test_renoise_lands_on_the_next_stage_start(scheduler, stage):
    """Pure noise at the previous stage's end level becomes i.i.d. noise at this stage's start level."""
    end_sigma = scheduler.end_sigmas[stage - 1]
    low = end_sigma * torch.randn(16, 4, 1, 32, 32, generator=gen(0))
    vectors = block_vectors(scheduler.renoise(low, stage, generator=gen(1)))
    expected = scheduler.start_sigmas[stage] ** 2 * torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(torch.cov(vectors.T), expected, atol=0.02, rtol=0)


@pytest.mark.parametrize("stage", [0, 3, -1, 1.0])
def test_renoise_rejects_bad_stage(scheduler, stage):
    with pytest.raises(ValueError, match=r"`stage` must be an int in \[1, 2\]"):
        scheduler.renoise(torch.zeros(1, 1, 1, 2, 2), stage)


def test_renoise_rejects_non_video(scheduler):
    with pytest.raises(ValueError, match="5-D latent"):
        scheduler.renoise(torch.zeros(1, 4, 2, 2), 1)


def test_downsample_noise(scheduler):
    noise = torch.randn(8, 4, 2, 64, 64, generator=gen(0))
    once = scheduler.downsample_noise(noise)
    assert once.shape == (8, 4, 2, 32, 32)
    per_frame = torch.nn.functional.interpolate(noise[:, :, 1], size=(32, 32), mode="bilinear") * 2.0
    torch.testing.assert_close(once[:, :, 1], per_frame)
    twice = scheduler.downsample_noise(noise, times=2)
    assert twice.shape == (8, 4, 2, 16, 16)
    assert twice.var().item() == pytest.approx(1.0, abs=0.05)  # variance preserving
    assert torch.equal(scheduler.downsample_noise(noise, times=0), noise)
    with pytest.raises(ValueError, match="int >= 0"):
        scheduler.downsample_noise(noise, times=-1)


# ---------------------------------------------------------------------------------------------- history


def test_pyramid(scheduler):
    latents = torch.randn(2, 4, 3, 40, 64, generator=gen(0))
    levels = scheduler.pyramid(latents)
    assert [lvl.shape[-2:] for lvl in levels] == [(10, 16), (20, 32), (40, 64)]
    assert levels[-1] is latents
    frame = torch.nn.functional.interpolate(latents[:, :, 2], size=(20, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(levels[1][:, :, 2], frame)


# (frames, level) per clip, oldest first; level 0 = 1/4 resolution, 2 = full
EXPECTED_LAYOUTS = {
    1: [[([0], 0)], [([0], 1)], [([0], 2)]],
    2: [[([0], 0), ([1], 0)], [([0], 0), ([1], 1)], [([0], 1), ([1], 2)]],
    3: [[([0, 1], 0), ([2], 0)], [([0, 1], 0), ([2], 1)], [([0], 0), ([1], 1), ([2], 2)]],
    6: [
        [([0, 1, 2, 3, 4], 0), ([5], 0)],
        [([0, 1, 2, 3, 4], 0), ([5], 1)],
        [([0, 1, 2, 3], 0), ([4], 1), ([5], 2)],
    ],
}


@pytest.mark.parametrize("num_frames", sorted(EXPECTED_LAYOUTS))
def test_history_conditions_layout(scheduler, num_frames):
    # frame k is constant k, so every resolution of it is still recognisable
    history = torch.arange(num_frames, dtype=torch.float32).reshape(1, 1, num_frames, 1, 1).expand(2, 4, -1, 16, 16)
    sizes = {0: 4, 1: 8, 2: 16}
    for stage in range(3):
        clips = scheduler.history_conditions(history, stage)
        assert len(clips) == len(EXPECTED_LAYOUTS[num_frames][stage])
        for clip, (frames, level) in zip(clips, EXPECTED_LAYOUTS[num_frames][stage]):
            assert clip.shape == (2, 4, len(frames), sizes[level], sizes[level])
            assert clip[0, 0, :, 0, 0].tolist() == [float(f) for f in frames]
        pyramid_clips = scheduler.history_conditions(scheduler.pyramid(history), stage)
        assert all(torch.equal(a, b) for a, b in zip(clips, pyramid_clips))


def test_history_conditions_empty_and_bad_inputs(scheduler):
    assert scheduler.history_conditions(None, 1) == []
    assert scheduler.history_conditions(torch.zeros(1, 4, 0, 8, 8), 2) == []
    with pytest.raises(ValueError, match=r"`stage` must be an int in \[0, 2\]"):
        scheduler.history_conditions(torch.zeros(1, 4, 1, 8, 8), 3)
    with pytest.raises(ValueError, match="5-D latent"):
        scheduler.history_conditions(torch.zeros(4, 1, 8, 8), 0)
    with pytest.raises(ValueError, match="list of 3 pyramid levels"):
        scheduler.history_conditions([torch.zeros(1, 4, 1, 8, 8)], 0)


# ---------------------------------------------------------------------------------------------- stepping


def test_step_forms(scheduler):
    sample = torch.randn(3, 2, 1, 4, 4, generator=gen(0))
    velocity = torch.randn(3, 2, 1, 4, 4, generator=gen(1))
    expected = sample - 0.25 * velocity
    out = scheduler.euler_step(velocity, sample, 1.0, 0.75)
    assert isinstance(out, PyramidalDMDSchedulerOutput)
    torch.testing.assert_close(out.prev_sample, expected)
    as_tensors = scheduler.euler_step(velocity, sample, torch.tensor(1.0), torch.tensor(0.75)).prev_sample
    torch.testing.assert_close(as_tensors, expected)
    (tupled,) = scheduler.euler_step(velocity, sample, 1.0, 0.75, return_dict=False)
    torch.testing.assert_close(tupled, expected)
    sigma = torch.tensor([1.0, 0.5, 0.2])
    per_sample = scheduler.euler_step(velocity, sample, sigma, torch.zeros(3)).prev_sample
    torch.testing.assert_close(per_sample, sample - sigma.view(3, 1, 1, 1, 1) * velocity)
    half = scheduler.euler_step(velocity.bfloat16(), sample, 1.0, 0.75).prev_sample
    assert half.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="batch size 3"):
        scheduler.euler_step(velocity, sample, torch.ones(2), 0.0)


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 20])
def test_euler_with_exact_velocity_lands_on_end(scheduler, steps):
    start = torch.randn(2, 4, 1, 8, 8, generator=gen(0))
    end = torch.randn(2, 4, 1, 8, 8, generator=gen(1))
    velocity = scheduler.velocity_target(start, end)
    scheduler.set_timesteps(steps)
    for stage in range(3):
        sigmas = scheduler.stage_sigmas[stage]
        x = scheduler.interpolate(start, end, sigmas[0])
        torch.testing.assert_close(x, start)
        for i in range(steps):
            x = scheduler.euler_step(velocity, x, sigmas[i], sigmas[i + 1]).prev_sample
            torch.testing.assert_close(x, scheduler.interpolate(start, end, sigmas[i + 1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(x, end, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- training


def test_stage_endpoints(scheduler):
    noise = torch.randn(2, 4, 1, 8, 8, generator=gen(0))
    clean = torch.randn(2, 4, 1, 8, 8, generator=gen(1))
    lower = torch.randn(2, 4, 1, 4, 4, generator=gen(2))
    start, end = scheduler.stage_endpoints(clean, noise, 0)
    assert start is noise
    torch.testing.assert_close(end, 0.667 * noise + 0.333 * clean)
    start, end = scheduler.stage_endpoints(clean, noise, 1, clean_lower=lower)
    sigma = scheduler.start_sigmas[1]
    torch.testing.assert_close(start, sigma * noise + (1 - sigma) * up2(lower))
    torch.testing.assert_close(end, 0.334 * noise + 0.666 * clean)
    start, end = scheduler.stage_endpoints(clean, noise, 2, clean_lower=lower)
    assert end is clean
    with pytest.raises(ValueError, match="`clean_lower`.*required"):
        scheduler.stage_endpoints(clean, noise, 1)
    with pytest.raises(ValueError, match="half the height and width"):
        scheduler.stage_endpoints(clean, noise, 1, clean_lower=clean)
    with pytest.raises(ValueError, match="same shape"):
        scheduler.stage_endpoints(clean, noise[..., :4], 0)
    with pytest.raises(ValueError, match=r"`stage` must be an int in \[0, 2\]"):
        scheduler.stage_endpoints(clean, noise, 3)


def test_sample_training_timesteps(scheduler):
    for stage in range(3):
        ratio, timestep = scheduler.sample_training_timesteps(stage, 64, generator=gen(stage))
        idx = (torch.rand(64, generator=gen(stage)) * 1000).long()
        torch.testing.assert_close(ratio, scheduler.sigmas_per_stage[stage][idx])
        torch.testing.assert_close(timestep, scheduler.timesteps_per_stage[stage][idx])
        assert ratio.dtype == timestep.dtype == torch.float32
    a = scheduler.sample_training_timesteps(1, 8, generator=gen(3))
    b = scheduler.sample_training_timesteps(1, 8, generator=gen(3))
    c = scheduler.sample_training_timesteps(1, 8, generator=gen(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    with pytest.raises(ValueError, match="batch_size"):
        scheduler.sample_training_timesteps(0, 0)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_training_point_is_on_the_global_flow_and_dmd_prediction_hits_the_end(scheduler, stage):
    """With a clean latent that is constant on 2x2 blocks (so up2(down) is exact), the interpolated training
    point is exactly (1 - g) clean + g noise at the global level g = end + r (start - end); the DMD student's
    stage-local one-step rule equals the paper's z - sigma / (start - end) * D with sigma = g - end, and
    with the exact velocity it lands on the stage end."""
    lower = torch.randn(2, 4, 1, 4, 4, generator=gen(0))
    clean = up2(lower)
    noise = torch.randn(2, 4, 1, 8, 8, generator=gen(1))
    start, end = scheduler.stage_endpoints(clean, noise, stage, clean_lower=lower if stage else None)
    ratio = torch.tensor([0.9, 0.35])
    x = scheduler.interpolate(start, end, ratio)
    s_start, s_end = scheduler.start_sigmas[stage], scheduler.end_sigmas[stage]
    g = (s_end + ratio * (s_start - s_end)).view(2, 1, 1, 1, 1)
    torch.testing.assert_close(x, (1 - g) * clean + g * noise, atol=1e-5, rtol=0)
    velocity = scheduler.velocity_target(start, end)
    predicted = scheduler.predict_stage_end(x, velocity, ratio)
    torch.testing.assert_close(predicted, end, atol=1e-5, rtol=0)
    paper = x - (g - s_end) / (s_start - s_end) * velocity
    torch.testing.assert_close(predicted, paper, atol=1e-6, rtol=0)
    torch.testing.assert_close(predicted, scheduler.euler_step(velocity, x, ratio, 0.0).prev_sample)
    if stage == 2:  # sigma_end = 0: the paper's formula with the global sigma itself
        torch.testing.assert_close(predicted, x - g / s_start * velocity, atol=1e-6, rtol=0)


def test_predict_stage_end_is_differentiable(scheduler):
    sample = torch.randn(2, 4, 1, 4, 4, generator=gen(0))
    model_output = torch.randn(2, 4, 1, 4, 4, generator=gen(1), requires_grad=True)
    scheduler.predict_stage_end(sample, model_output, 0.7).sum().backward()
    torch.testing.assert_close(model_output.grad, torch.full_like(sample, -0.7))


def test_predict_clean_stage_latent_hand_computed(scheduler):
    """The paper's z - g / (start - end) * D with hand-computed stage 1 values: start = 1 - a / (2 (1 - a) + a) with
    a = 0.333 (= 0.800240), end = 0.334; at local sigma 0.5, g = 0.334 + 0.5 * 0.466240 = 0.567120, so the step
    length is g / 0.466240 = 1.216369; in the last stage (end 0) it is the global sigma itself / start (= sigma)."""
    sample = torch.zeros(1, 1, 1, 2, 2)
    velocity = torch.ones(1, 1, 1, 2, 2)
    out = scheduler.predict_clean_stage_latent(sample, velocity, 0.5, stage=1)
    torch.testing.assert_close(out, torch.full_like(sample, -1.216369), atol=2e-6, rtol=0)
    out = scheduler.predict_clean_stage_latent(sample + 2.0, velocity * 3.0, torch.tensor([0.25]), stage=0)
    torch.testing.assert_close(out, torch.full_like(sample, 2.0 - 3.0 * (0.667 + 0.25 * 0.333) / 0.333))
    torch.testing.assert_close(scheduler.predict_clean_stage_latent(sample, velocity, 0.3, stage=2),
                               scheduler.predict_stage_end(sample, velocity, 0.3))


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_predict_clean_stage_latent_recovers_the_clean_latent(scheduler, stage):
    """With the exact velocity and a clean latent constant on 2x2 blocks, the one-step rule lands on the clean
    stage latent (noise level 0), from any point of the stage; differentiable in the model output."""
    lower = torch.randn(2, 4, 1, 4, 4, generator=gen(0))
    clean = up2(lower)
    noise = torch.randn(2, 4, 1, 8, 8, generator=gen(1))
    start, end = scheduler.stage_endpoints(clean, noise, stage, clean_lower=lower if stage else None)
    ratio = torch.tensor([1.0, 0.35])
    x = scheduler.interpolate(start, end, ratio)
    velocity = scheduler.velocity_target(start, end).requires_grad_(True)
    predicted = scheduler.predict_clean_stage_latent(x, velocity, ratio, stage)
    torch.testing.assert_close(predicted, clean, atol=1e-5, rtol=0)
    predicted.sum().backward()
    assert velocity.grad is not None and (velocity.grad < 0).all()


def test_sample_inference_timesteps_are_the_sampler_grid(scheduler):
    """A student with n steps per stage is trained at exactly the (sigma, timestep) pairs set_timesteps(n) visits."""
    fresh = PyramidalDMDScheduler()
    fresh.set_timesteps([4, 4, 4])
    ratio, timestep = scheduler.sample_inference_timesteps(1, 4, 64, generator=gen(0))
    sigmas, timesteps = fresh.stage_sigmas[1][:-1], fresh.stage_timesteps[1]
    for r, t in zip(ratio, timestep):
        k = int((sigmas == r).nonzero()[0])
        assert timesteps[k] == t
    assert len(set(ratio.tolist())) == 4  # all four steps drawn
    ratio, timestep = scheduler.sample_inference_timesteps(2, 1, 3, generator=gen(0))
    assert ratio.tolist() == [1.0] * 3 and timestep.tolist() == [fresh.stage_timesteps[2][0].item()] * 3
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.sample_inference_timesteps(0, 0, 2)


# ---------------------------------------------------------------------------------------------- config


def test_save_and_load_round_trip(tmp_path):
    for scheduler in (PyramidalDMDScheduler(), PyramidalDMDScheduler(stages=2, gamma=0.25, stage_range=[0, 0.4, 1])):
        scheduler.save_pretrained(tmp_path / "s")
        loaded = PyramidalDMDScheduler.from_pretrained(tmp_path / "s")
        for key in ("num_train_timesteps", "stages", "gamma", "stage_range"):
            assert loaded.config[key] == scheduler.config[key]
        assert loaded.start_sigmas == scheduler.start_sigmas
        assert loaded.renoise_coefficients == scheduler.renoise_coefficients
        for a, b in zip(loaded.timesteps_per_stage, scheduler.timesteps_per_stage):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gamma": 0.5}, "positive semidefinite"),
        ({"gamma": 0.0}, r"\(0, 1/3\]"),
        ({"stages": 0}, "`stages` must be a positive int"),
        ({"num_train_timesteps": 0}, "`num_train_timesteps` must be a positive int"),
        ({"stage_range": [0, 0.5, 1]}, "stages \\+ 1 = 4 strictly increasing"),
        ({"stage_range": [0, 0.6, 0.5, 1]}, "strictly increasing"),
        ({"stage_range": [0.1, 0.3, 0.6, 1]}, "from 0.0 to 1.0"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PyramidalDMDScheduler(**kwargs)


# ---------------------------------------------------------------------- diffusers' stateful interface


def _explicit_pyramid(scheduler, x, steps, model, generator):
    """The explicit-sigma loop of the pipeline's `denoise_unit` (without history)."""
    scheduler.set_timesteps(steps)
    for stage in range(scheduler.config.stages):
        if stage > 0:
            x = scheduler.renoise(x, stage, generator=generator)
        for i, t in enumerate(scheduler.stage_timesteps[stage]):
            x = scheduler.euler_step(model(x, t), x, scheduler.stage_sigmas[stage][i],
                                     scheduler.stage_sigmas[stage][i + 1]).prev_sample
    return x


def _toy_model(x, t):
    return torch.sin(x + t / 1000)


@pytest.mark.parametrize("steps", [[1, 1, 1], [2, 3, 1]])
def test_stateful_loop_over_timesteps_equals_the_explicit_sigma_loop(scheduler, steps):
    x0 = torch.randn(1, 2, 1, 4, 4, generator=gen(0))
    expected = _explicit_pyramid(scheduler, x0, steps, _toy_model, gen(1))
    scheduler.set_timesteps(steps)
    assert scheduler.init_noise_sigma == 1.0 and scheduler.order == 1
    x, generator, stages_seen = x0 * scheduler.init_noise_sigma, gen(1), []
    for t in scheduler.timesteps:
        stages_seen.append(scheduler.stage_index)
        x_in = scheduler.scale_model_input(x, t)
        assert x_in is x
        x = scheduler.step(_toy_model(x_in, t), t, x, generator=generator).prev_sample
    assert stages_seen == [s for s, k in enumerate(steps) for _ in range(k)]
    assert x.shape == (1, 2, 1, 16, 16)  # re-noised into each next stage: 4 -> 8 -> 16
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    fresh = PyramidalDMDScheduler()
    fresh.set_timesteps(steps)
    (tupled,) = fresh.step(torch.ones_like(x0), 1000.0, x0, return_dict=False)
    assert tupled.shape == (x0.shape if steps[0] > 1 else (1, 2, 1, 8, 8))
    with pytest.raises(ValueError, match="more times than there are"):
        scheduler.step(x, scheduler.timesteps[-1], x)


def test_set_stage_walks_one_stage_without_renoise(scheduler):
    scheduler.set_timesteps([1, 3, 1])
    scheduler.set_stage(1)
    assert torch.equal(scheduler.timesteps, scheduler.stage_timesteps[1]) and scheduler.stage_index == 1
    x = torch.randn(1, 2, 1, 8, 8, generator=gen(0))
    expected = x
    for i, t in enumerate(scheduler.stage_timesteps[1]):
        expected = scheduler.euler_step(_toy_model(expected, t), expected, scheduler.stage_sigmas[1][i],
                                        scheduler.stage_sigmas[1][i + 1]).prev_sample
    for t in scheduler.timesteps:
        x = scheduler.step(_toy_model(x, t), t, x).prev_sample
    assert x.shape == (1, 2, 1, 8, 8)
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    # The first step may start in the middle: it locates its timestep.
    scheduler.set_stage(1)
    scheduler.step(x, scheduler.timesteps[2], x)
    assert scheduler.step_index == 3
    with pytest.raises(ValueError, match="is not one of"):
        scheduler.set_stage(1) or scheduler.step(x, 12345.0, x)
    with pytest.raises(ValueError, match="`stage` must be an int"):
        scheduler.set_stage(3)
    with pytest.raises(ValueError, match="before `set_stage`"):
        PyramidalDMDScheduler().set_stage(0)
    with pytest.raises(ValueError, match="before `step`"):
        PyramidalDMDScheduler().step(x, 1000.0, x)


def test_compatibles_list_the_scheduler_itself(scheduler):
    assert PyramidalDMDScheduler in scheduler.compatibles
    assert "PyramidalDMDScheduler" in PyramidalDMDScheduler._compatibles


def test_save_and_load_round_trip_gives_identical_outputs(tmp_path):
    scheduler = PyramidalDMDScheduler(stages=3, gamma=0.25, stage_range=[0, 0.25, 0.6, 1])
    scheduler.save_pretrained(tmp_path)
    loaded = PyramidalDMDScheduler.from_pretrained(tmp_path)
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == {
        k: v for k, v in scheduler.config.items() if not k.startswith("_")
    }
    x = torch.randn(2, 2, 1, 4, 4, generator=gen(3))
    a = _explicit_pyramid(scheduler, x, [2, 2, 2], _toy_model, gen(4))
    b = _explicit_pyramid(loaded, x, [2, 2, 2], _toy_model, gen(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for s in (scheduler, loaded):
        s.set_timesteps(2)
    assert torch.equal(scheduler.timesteps, loaded.timesteps)
    assert scheduler.start_sigmas == loaded.start_sigmas
    assert scheduler.renoise_coefficients == loaded.renoise_coefficients
