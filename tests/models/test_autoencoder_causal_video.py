import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types

import pytest
import torch

from diffusers_neodragon.models.autoencoders.autoencoder_asymmetric import AsymmetricVAE
from diffusers_neodragon.models.autoencoders.autoencoder_causal_video import CausalVideoDecoder, CausalVideoVAE
from tests.models.test_autoencoder_asymmetric import latents, single_thread, video  # noqa: F401
from tests.tiny_components import WIDE_ENCODER, fan_in_init_, tiny_causal_vae


TINY = dict(**WIDE_ENCODER, decoder_block_out_channels=(8, 16, 16, 16), decoder_layers_per_block=(3, 3, 3, 3))
PYRAMID_FLOW_PATH = os.environ.get("PYRAMID_FLOW_REFERENCE_PATH", "/work/ref/pyramid-flow")


def tiny_vae(seed=0, **overrides):
    return tiny_causal_vae(seed, init="fan_in", **{**TINY, **overrides})


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


@pytest.mark.parametrize("latent_frames", [1, 2, 3])
def test_shapes_follow_the_frame_law(vae, latent_frames):
    frames = 1 + 8 * (latent_frames - 1)
    with torch.no_grad():
        mean = vae.encode(video(frames)).latent_dist.mean
        assert mean.shape == (1, 16, latent_frames, 2, 3)
        assert vae.decode(mean).sample.shape == (1, 3, frames, 16, 24)


def test_decoder_is_causal(vae):
    z = latents(3)
    changed = z.clone()
    changed[:, :, 2] -= 1.0
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
        torch.testing.assert_close(vae.decode(z, decode_chunk_size=3).sample, parallel, rtol=0, atol=1e-5)


def test_chunked_encode_equals_full_encode(vae):
    x = video(17)
    with torch.no_grad():
        full = vae.encode(x).latent_dist.parameters
        chunked = vae.encode(x, encode_chunk_size=8).latent_dist.parameters
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-5)


def test_latent_constants_default_to_neodragon_and_are_config(vae):
    z = latents(2)
    normalized = vae.normalize_latents(z)
    torch.testing.assert_close(normalized[:, :, :1], (z[:, :, :1] - 0.1490) * 0.5430)
    torch.testing.assert_close(normalized[:, :, 1:], (z[:, :, 1:] + 0.2343) * 0.3031)
    upstream = CausalVideoVAE(**TINY, video_latent_scale=1 / 3.0986)
    torch.testing.assert_close(upstream.normalize_latents(z)[:, :, 1:], (z[:, :, 1:] + 0.2343) / 3.0986)
    torch.testing.assert_close(upstream.denormalize_latents(upstream.normalize_latents(z)), z, rtol=0, atol=1e-6)


def test_save_and_load_round_trip_is_bit_exact(vae, tmp_path):
    vae.save_pretrained(tmp_path)
    loaded = CausalVideoVAE.from_pretrained(tmp_path).eval()
    for key, value in vae.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    z = latents(2)
    with torch.no_grad():
        assert torch.equal(loaded.decode(z).sample, vae.decode(z).sample)


def test_rejects_bad_inputs(vae):
    with pytest.raises(ValueError):
        vae.encode(torch.zeros(1, 3, 9, 16, 20))
    with pytest.raises(ValueError):
        vae.decode(torch.zeros(1, 4, 2, 2, 2))
    with pytest.raises(ValueError):
        CausalVideoVAE(**TINY, decoder_spatial_upsample=(True, True, False, False))
    with pytest.raises(ValueError):
        CausalVideoDecoder(block_out_channels=(8, 16), layers_per_block=(1, 1, 1))


def test_full_size_layout_and_parameter_counts():
    with torch.device("meta"):
        model = CausalVideoVAE()
        tiny_decoder_vae = AsymmetricVAE()
    state = model.state_dict()
    encoder_keys = {k for k in tiny_decoder_vae.state_dict() if k.startswith(("encoder.", "quant_conv."))}
    assert encoder_keys <= set(state)
    for key in [
        "post_quant_conv.conv.weight",
        "decoder.conv_in.conv.weight",
        "decoder.mid_block.attentions.0.to_q.weight",
        "decoder.mid_block.resnets.1.conv2.conv.weight",
        "decoder.up_blocks.0.resnets.2.conv1.conv.weight",
        "decoder.up_blocks.0.upsamplers.0.conv.conv.weight",
        "decoder.up_blocks.2.temporal_upsamplers.0.conv.conv.weight",
        "decoder.up_blocks.2.resnets.0.conv_shortcut.conv.weight",
        "decoder.up_blocks.3.resnets.0.conv_shortcut.conv.weight",
        "decoder.conv_norm_out.weight",
        "decoder.conv_out.conv.weight",
    ]:
        assert key in state, key
    assert not any(k.startswith("decoder.up_blocks.3.") and "samplers" in k for k in state)
    assert state["decoder.up_blocks.0.upsamplers.0.conv.conv.weight"].shape == (2048, 512, 3, 3, 3)
    assert state["decoder.up_blocks.2.temporal_upsamplers.0.conv.conv.weight"].shape == (512, 256, 3, 3, 3)
    assert sum(p.numel() for p in model.encoder.parameters()) == 109_632_032
    assert sum(p.numel() for p in model.decoder.parameters()) == 225_768_707


# ----- equivalence with Pyramid-Flow's CausalVideoVAE (skipped without a local copy) -----


def _stub(name, **attrs):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    return module


@pytest.fixture(scope="module")
def pyramid_flow_vae_module():
    """Import Pyramid-Flow's ``video_vae.modeling_causal_vae`` without its package __init__ (which pulls in the
    LPIPS/discriminator losses), stubbing its single-GPU context-parallel helpers and, if absent, timm."""
    folder = os.path.join(PYRAMID_FLOW_PATH, "video_vae")
    if not os.path.isdir(folder):
        pytest.skip(f"Pyramid-Flow not found at {PYRAMID_FLOW_PATH} (set PYRAMID_FLOW_REFERENCE_PATH)")

    def no_op(*args, **kwargs):
        return None

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(
            sys.modules,
            "utils",
            _stub(
                "utils",
                is_context_parallel_initialized=lambda: False,
                get_context_parallel_group=no_op,
                get_context_parallel_world_size=lambda: 1,
                get_context_parallel_rank=lambda: 0,
                get_context_parallel_group_rank=lambda: 0,
            ),
        )
        if importlib.util.find_spec("timm") is None:
            layers = dict(trunc_normal_=torch.nn.init.trunc_normal_, drop_path=no_op, to_2tuple=no_op)
            for name, attrs in (("timm", {}), ("timm.models", {}), ("timm.models.layers", layers)):
                patch.setitem(sys.modules, name, _stub(name, **attrs))
        package = _stub("_pyramid_flow_video_vae")
        package.__path__ = [folder]
        patch.setitem(sys.modules, "_pyramid_flow_video_vae", package)
        try:
            return importlib.import_module("_pyramid_flow_video_vae.modeling_causal_vae")
        except Exception as error:  # the reference pins old library versions
            pytest.skip(f"Pyramid-Flow's video VAE does not import here: {error}")


def test_matches_pyramid_flow_numerically(pyramid_flow_vae_module):
    reference = pyramid_flow_vae_module.CausalVideoVAE(
        encoder_out_channels=16,
        decoder_in_channels=16,
        encoder_block_out_channels=TINY["encoder_block_out_channels"],
        decoder_block_out_channels=TINY["decoder_block_out_channels"],
        encoder_norm_num_groups=TINY["norm_num_groups"],
        decoder_norm_num_groups=TINY["norm_num_groups"],
        interpolate=False,
    ).eval()
    fan_in_init_(reference, seed=5)
    ours = tiny_causal_vae(seed=None, init=None, **TINY)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x, z = video(17), latents(3)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.encode(x).latent_dist.parameters, reference.encode(x).latent_dist.parameters, rtol=0, atol=1e-5
        )
        torch.testing.assert_close(ours.decode(z).sample, reference.decode(z).sample, rtol=0, atol=1e-5)
        # Pyramid-Flow's own chunked decode (its feature cache) agrees with our streaming decode
        torch.testing.assert_close(
            torch.cat(list(ours.iter_decode(z)), dim=2),
            reference.decode(z, temporal_chunk=True, window_size=1).sample,
            rtol=0,
            atol=1e-5,
        )
