import importlib.util
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from diffusers_neodragon.models.text_encoder_dt5 import DT5Config, DT5EncoderModel
from tests.tiny_components import DT5, tiny_dt5


REF_FILE = "/work/ref/neodragon/neodragon/distil_t5.py"
# Two layers (only the first holds the relative attention bias), four heads narrower than d_model / heads.
TINY = {**DT5, **dict(vocab_size=40, d_kv=4, d_ff=24, num_layers=2, num_heads=4, projection_dim=20)}


def _tiny(seed=0):
    return tiny_dt5(seed=seed, **TINY)


def _inputs():
    torch.manual_seed(1)
    ids = torch.randint(3, TINY["vocab_size"], (2, 7))
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = 0, 0
    ids[0, 6] = ids[1, 4] = 1  # EOS
    return ids, mask


def test_full_size_parameter_count_on_meta():
    config = DT5Config()  # defaults = the released DT5 (T5-v1.1-base encoder + 768→4096 head)
    assert (config.vocab_size, config.d_model, config.d_kv, config.d_ff, config.num_layers, config.num_heads) == (
        32128, 768, 64, 2048, 12, 12)
    assert config.is_gated_act and config.dense_act_fn == "gelu_new" and config.projection_dim == 4096
    with torch.device("meta"):
        model = DT5EncoderModel(config)
    assert sum(p.numel() for p in model.encoder.parameters()) == 109_628_544
    assert sum(p.numel() for p in model.final_projection.parameters()) == 19_922_944
    assert sum(p.numel() for p in model.parameters()) == 129_551_488  # tied embedding counted once


def test_state_dict_keys_follow_official_layout():
    keys = set(_tiny().state_dict())
    expected = {
        "encoder.shared.weight",
        "encoder.encoder.embed_tokens.weight",
        "encoder.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "encoder.encoder.final_layer_norm.weight",
        "final_projection.0.weight",
        "final_projection.3.weight",
    }
    expected |= {f"encoder.encoder.block.1.layer.0.SelfAttention.{n}.weight" for n in "qkvo"}
    expected |= {f"encoder.encoder.block.1.layer.1.DenseReluDense.{n}.weight" for n in ("wi_0", "wi_1", "wo")}
    expected |= {f"encoder.encoder.block.1.layer.{i}.layer_norm.weight" for i in (0, 1)}
    assert expected <= keys
    assert all(k.startswith(("encoder.", "final_projection.")) for k in keys)
    assert not any("final_projection" in k and k.endswith("bias") for k in keys)


def test_forward_shapes_mask_and_tuple():
    model = _tiny()
    ids, mask = _inputs()
    out = model(ids, attention_mask=mask)
    assert out.last_hidden_state.shape == (2, 7, 20)
    (tuple_out,) = model(ids, attention_mask=mask, return_dict=False)
    assert torch.equal(tuple_out, out.last_hidden_state)
    # Padded positions are masked out: changing their ids leaves the real tokens' features unchanged.
    ids2 = ids.clone()
    ids2[1, 5:] = 7
    torch.testing.assert_close(model(ids2, attention_mask=mask).last_hidden_state[1, :5], out.last_hidden_state[1, :5])
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="batch, seq_len"):
        model(ids[0])


def test_save_load_round_trip_is_exact_and_complete(tmp_path):
    model = _tiny()
    model.save_pretrained(tmp_path)
    # transformers stores one copy of the tied embedding (encoder.shared.weight).
    saved = set(load_file(tmp_path / "model.safetensors"))
    assert saved == set(model.state_dict()) - {"encoder.encoder.embed_tokens.weight"}
    loaded, info = DT5EncoderModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    loaded.eval()
    assert loaded.encoder.shared.weight is loaded.encoder.encoder.embed_tokens.weight
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    ids, mask = _inputs()
    assert torch.equal(model(ids, attention_mask=mask).last_hidden_state,
                       loaded(ids, attention_mask=mask).last_hidden_state)
    # Registered with the Auto classes.
    assert type(AutoConfig.from_pretrained(tmp_path)) is DT5Config
    assert type(AutoModel.from_pretrained(tmp_path)) is DT5EncoderModel


@pytest.mark.parametrize("drop", [None, "encoder.shared.weight", "encoder.encoder.embed_tokens.weight"])
def test_loads_official_style_checkpoints_with_either_tied_key(tmp_path, drop):
    model = _tiny()
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}  # both tied keys, as released
    if drop is not None:
        del state[drop]
    state["encoder.decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(2, 2)  # ignored leftovers
    model.config.save_pretrained(tmp_path)
    save_file(state, tmp_path / "model.safetensors")
    loaded, info = DT5EncoderModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert torch.equal(loaded.encoder.encoder.embed_tokens.weight, model.encoder.shared.weight)
    assert torch.equal(loaded.encoder.shared.weight, model.encoder.shared.weight)


def test_half_precision_output_dtype(tmp_path):
    _tiny().save_pretrained(tmp_path)
    model = DT5EncoderModel.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    ids, mask = _inputs()
    assert model(ids, attention_mask=mask).last_hidden_state.dtype == torch.bfloat16


@pytest.mark.skipif(not os.path.exists(REF_FILE), reason="reference Neodragon code not available")
def test_matches_reference_implementation():
    spec = importlib.util.spec_from_file_location("_ref_neodragon_distil_t5", REF_FILE)
    ref_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref_module)
    ours = _tiny()
    ref_kwargs = {k: v for k, v in TINY.items() if k != "projection_dim"}
    ref_config = ref_module.T5ProjectionConfig(project_in_dim=TINY["d_model"], out_dim=TINY["projection_dim"],
                                               **ref_kwargs)
    ref = ref_module.T5EncoderWithProjection(ref_config).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=True)
    assert not missing and not unexpected
    ids, mask = _inputs()
    torch.testing.assert_close(
        ours(ids, attention_mask=mask).last_hidden_state, ref(ids, attention_mask=mask)[0], atol=1e-5, rtol=0
    )
