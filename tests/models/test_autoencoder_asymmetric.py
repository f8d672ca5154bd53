import importlib.machinery
import importlib.util
import sys
import types

import pytest
import torch

from diffusers_neodragon.models.autoencoders.autoencoder_asymmetric import AsymmetricVAE, TinyVideoDecoder
from tests.reference_utils import import_reference
from tests.tiny_components import WIDE_ENCODER, fan_in_init_, tiny_asymmetric_vae


TINY = dict(**WIDE_ENCODER, decoder_num_features=(16, 8, 8, 8))


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These tiny convs are dominated by OpenMP synchronisation: one thread is several times faster, most of all
    on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_vae(seed=0, **overrides):
    return tiny_asymmetric_vae(seed, init="fan_in", **{**TINY, **overrides})


def video(frames, batch=1, height=16, width=24, seed=1):
    return torch.rand(batch, 3, frames, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latents(frames, batch=1, height=2, width=3, seed=2):
    return torch.randn(batch, 16, frames, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


@pytest.mark.parametrize("latent_frames", [1, 2, 3])
def test_shapes_follow_the_frame_law(vae, latent_frames):
    frames = 1 + 8 * (latent_frames - 1)
    with torch.no_grad():
        posterior = vae.encode(video(frames, batch=2)).latent_dist
        assert posterior.mean.shape == (2, 16, latent_frames, 2, 3)
        assert posterior.logvar.shape == (2, 16, latent_frames, 2, 3)
        sample = vae.decode(posterior.mean).sample
    assert sample.shape == (2, 3, frames, 16, 24)
    assert vae.decode(posterior.mean, return_dict=False)[0].shape == sample.shape


def test_encoder_is_causal(vae):
    x = video(17)
    changed = x.clone()
    changed[:, :, 9] += 1.0  # frame 9 is the first frame of latent frame 2
    with torch.no_grad():
        a = vae.encode(x).latent_dist.mean
        b = vae.encode(changed).latent_dist.mean
    torch.testing.assert_close(a[:, :, :2], b[:, :, :2], rtol=0, atol=0)
    assert not torch.allclose(a[:, :, 2], b[:, :, 2])


def test_decoder_is_causal(vae):
    z = latents(3)
    changed = z.clone()
    changed[:, :, 2] += 1.0
    with torch.no_grad():
        a = vae.decode(z).sample
        b = vae.decode(changed).sample
    torch.testing.assert_close(a[:, :, :9], b[:, :, :9], rtol=0, atol=0)
    assert not torch.allclose(a[:, :, 9:], b[:, :, 9:])


def test_streaming_decode_equals_parallel_decode(vae):
    z = latents(4, batch=2)
    with torch.no_grad():
        parallel = vae.decode(z).sample
        pieces = list(vae.iter_decode(z))
        assert [p.shape[2] for p in pieces] == [1, 8, 8, 8]
        torch.testing.assert_close(torch.cat(pieces, dim=2), parallel, rtol=0, atol=1e-5)
        for chunk in (2, 3):
            chunked = vae.decode(z, decode_chunk_size=chunk).sample
            torch.testing.assert_close(chunked, parallel, rtol=0, atol=1e-5)


def test_chunked_encode_equals_full_encode(vae):
    x = video(25)
    with torch.no_grad():
        full = vae.encode(x).latent_dist.parameters
        for chunk in (8, 16):
            chunked = vae.encode(x, encode_chunk_size=chunk).latent_dist.parameters
            torch.testing.assert_close(chunked, full, rtol=0, atol=1e-5)


def test_streaming_decoder_holds_one_frame_per_memblock():
    decoder = fan_in_init_(TinyVideoDecoder(num_features=TINY["decoder_num_features"]))
    cache = {}
    with torch.no_grad():
        decoder(latents(2), cache)
    memories = [value for value in cache.values() if isinstance(value, torch.Tensor)]
    assert len(memories) == 9 and all(m.shape[1] == 1 for m in memories)


def test_posterior_clamps_logvar_like_diffusers(vae):
    with torch.no_grad():
        vae.quant_conv.conv.bias[16:] = 100.0
        try:
            posterior = vae.encode(video(1)).latent_dist
        finally:
            vae.quant_conv.conv.bias[16:] = 0.0
    assert posterior.logvar.max() == 20.0


def test_normalize_uses_image_constants_for_frame_zero(vae):
    z = latents(3)
    original = z.clone()
    normalized = vae.normalize_latents(z)
    torch.testing.assert_close(z, original, rtol=0, atol=0)  # not in place
    torch.testing.assert_close(normalized[:, :, :1], (z[:, :, :1] - 0.1490) * 0.5430)
    torch.testing.assert_close(normalized[:, :, 1:], (z[:, :, 1:] + 0.2343) * 0.3031)
    torch.testing.assert_close(vae.denormalize_latents(normalized), z, rtol=0, atol=1e-6)
    # a later chunk of the same video uses the video constants throughout
    torch.testing.assert_close(vae.normalize_latents(z[:, :, 1:], start_frame=1), normalized[:, :, 1:])
    torch.testing.assert_close(vae.denormalize_latents(normalized[:, :, 2:], start_frame=2), z[:, :, 2:])


def test_slicing_gives_the_same_result(vae):
    x = video(9, batch=2)
    with torch.no_grad():
        expected_mean = vae.encode(x).latent_dist.mean
        expected = vae.decode(expected_mean).sample
        vae.enable_slicing()
        try:
            mean = vae.encode(x).latent_dist.mean
            sample = vae.decode(mean).sample
        finally:
            vae.disable_slicing()
    torch.testing.assert_close(mean, expected_mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(sample, expected, rtol=0, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    x = video(9)

    def grads(checkpointing):
        model = tiny_vae().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(x).sample.square().mean().backward()
        return [p.grad for p in model.parameters()]

    for a, b in zip(grads(False), grads(True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_forward_reconstructs_with_mean_or_sample(vae):
    x = video(9)
    with torch.no_grad():
        mean_recon = vae(x).sample
        sampled = vae(x, sample_posterior=True, generator=torch.Generator().manual_seed(0)).sample
    assert mean_recon.shape == sampled.shape == x.shape
    assert not torch.allclose(mean_recon, sampled)


def test_save_and_load_round_trip_is_bit_exact(vae, tmp_path):
    vae.save_pretrained(tmp_path)
    loaded = AsymmetricVAE.from_pretrained(tmp_path).eval()
    assert loaded.config.decoder_num_features == list(TINY["decoder_num_features"])
    assert loaded.config.video_latent_scale == 0.3031
    for key, value in vae.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    z = latents(2)
    with torch.no_grad():
        assert torch.equal(loaded.decode(z).sample, vae.decode(z).sample)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(3, 9, 16, 16),  # not 5-D
        torch.zeros(1, 4, 9, 16, 16),  # wrong channels
        torch.zeros(1, 3, 10, 16, 16),  # frames not 1 + 8k
        torch.zeros(1, 3, 9, 12, 16),  # height not a multiple of 8
    ],
)
def test_encode_rejects_bad_shapes(vae, bad):
    with pytest.raises(ValueError):
        vae.encode(bad)


def test_decode_and_config_reject_bad_arguments(vae):
    with pytest.raises(ValueError):
        vae.decode(torch.zeros(16, 2, 2, 3))
    with pytest.raises(ValueError):
        vae.decode(latents(2)[:, :8])
    with pytest.raises(ValueError):
        vae.iter_decode(latents(2), decode_chunk_size=0)
    with pytest.raises(ValueError):
        vae.encode(video(9), encode_chunk_size=4)
    with pytest.raises(ValueError):
        AsymmetricVAE(**TINY, decoder_time_upscale=(False, True, True))
    with pytest.raises(ValueError):
        AsymmetricVAE(**{**TINY, "encoder_layers_per_block": (2, 2, 2)})


OFFICIAL_KEYS = [
    "encoder.conv_in.conv.weight",
    "encoder.down_blocks.0.resnets.0.norm1.weight",
    "encoder.down_blocks.0.resnets.1.conv2.conv.bias",
    "encoder.down_blocks.1.resnets.0.conv_shortcut.conv.weight",
    "encoder.down_blocks.2.resnets.0.conv_shortcut.conv.weight",
    "encoder.down_blocks.2.downsamplers.0.conv.conv.weight",
    "encoder.down_blocks.2.temporal_downsamplers.0.conv.conv.weight",
    "encoder.down_blocks.3.resnets.1.norm2.bias",
    "encoder.mid_block.resnets.1.conv1.conv.weight",
    "encoder.mid_block.attentions.0.group_norm.weight",
    "encoder.mid_block.attentions.0.to_q.weight",
    "encoder.mid_block.attentions.0.to_k.bias",
    "encoder.mid_block.attentions.0.to_v.weight",
    "encoder.mid_block.attentions.0.to_out.0.weight",
    "encoder.conv_norm_out.weight",
    "encoder.conv_out.conv.weight",
    "quant_conv.conv.weight",
    "post_quant_conv.conv.weight",
    "decoder.blocks.1.weight",
    "decoder.blocks.3.conv.0.weight",
    "decoder.blocks.5.conv.4.bias",
    "decoder.blocks.7.conv.weight",
    "decoder.blocks.8.weight",
    "decoder.blocks.13.conv.weight",
    "decoder.blocks.17.conv.2.weight",
    "decoder.blocks.19.conv.weight",
    "decoder.blocks.20.weight",
    "decoder.blocks.22.bias",
]


def test_full_size_keys_and_parameter_counts():
    with torch.device("meta"):
        model = AsymmetricVAE()
    state = model.state_dict()
    missing = [key for key in OFFICIAL_KEYS if key not in state]
    assert not missing
    assert not any(key.startswith("encoder.down_blocks.3.") and "samplers" in key for key in state)
    assert state["decoder.blocks.7.conv.weight"].shape == (512, 256, 1, 1)
    assert state["quant_conv.conv.weight"].shape == (32, 32, 1, 1, 1)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.encoder) == 109_632_032
    assert count(model.decoder) == 9_910_147
    assert count(model.quant_conv) == 1_056 and count(model.post_quant_conv) == 272


# ----- equivalence with the official implementation (skipped without a local copy) -----


@pytest.fixture(scope="module")
def reference_vae_module():
    with pytest.MonkeyPatch.context() as patch:
        if importlib.util.find_spec("timm") is None:  # the reference imports timm only for trunc_normal_
            for name, attrs in (("timm", {}), ("timm.layers", {"trunc_normal_": torch.nn.init.trunc_normal_})):
                module = types.ModuleType(name)
                module.__spec__ = importlib.machinery.ModuleSpec(name, None)
                module.__dict__.update(attrs)
                patch.setitem(sys.modules, name, module)
        return import_reference("asymmetric_causal_video_vae")


def test_full_size_encoder_matches_reference_parameter_count(reference_vae_module):
    with torch.device("meta"):
        reference = reference_vae_module.AsymmetricCausalVideoVAE()
    assert sum(p.numel() for p in reference.encoder.parameters()) == 109_632_032
    assert sum(p.numel() for p in reference.decoder.parameters()) == 9_910_147


def test_matches_reference_numerically(reference_vae_module):
    reference = reference_vae_module.AsymmetricCausalVideoVAE(
        encoder_block_out_channels=TINY["encoder_block_out_channels"], encoder_norm_num_groups=TINY["norm_num_groups"],
        decoder_num_features=TINY["decoder_num_features"],
    ).eval()
    fan_in_init_(reference, seed=3)
    ours = tiny_asymmetric_vae(seed=None, init=None, **TINY)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x, z = video(17), latents(3)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.encode(x).latent_dist.parameters, reference.encode(x).latent_dist.parameters, rtol=0, atol=1e-5
        )
        torch.testing.assert_close(ours.decode(z).sample, reference.decode(z).sample, rtol=0, atol=1e-5)
        image = video(1)
        torch.testing.assert_close(
            ours.encode(image).latent_dist.mean, reference.encode(image).latent_dist.mean, rtol=0, atol=1e-5
        )


def test_memblocks_per_stage_are_configurable_and_default_to_the_official_three():
    from diffusers_neodragon.models.autoencoders.autoencoder_asymmetric import MemBlock

    def count(vae):
        return sum(isinstance(b, MemBlock) for b in vae.decoder.blocks)

    assert count(tiny_asymmetric_vae()) == 9
    assert count(tiny_asymmetric_vae(decoder_blocks_per_stage=1)) == 3
    vae = tiny_asymmetric_vae(decoder_blocks_per_stage=(2, 0, 1))
    assert count(vae) == 3
    z = torch.randn(1, vae.config.latent_channels, 3, 2, 2)
    with torch.no_grad():
        whole = vae.decode(z).sample
        streamed = torch.cat(list(vae.iter_decode(z, decode_chunk_size=1)), dim=2)
    assert whole.shape == (1, 3, 17, 16, 16)
    torch.testing.assert_close(streamed, whole)
    with pytest.raises(ValueError, match="blocks_per_stage"):
        tiny_asymmetric_vae(decoder_blocks_per_stage=(1, 1))
