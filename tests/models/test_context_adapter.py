import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

from diffusers_neodragon.loaders import (
    convert_official_context_adapter_config,
    convert_official_context_adapter_state_dict,
)
from diffusers_neodragon.models.context_adapter import ContextAdapter
from tests.tiny_components import tiny_context_adapter


REF_FILE = "/work/ref/neodragon/neodragon/context_adapter.py"
# Every width different and three hidden layers, so that a transposed or misplaced weight cannot load.
TINY = dict(in_features=8, out_features=6, hidden_features=(5, 7, 4))


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = tiny_context_adapter(**TINY)
    with torch.no_grad():  # non-zero biases so that bias handling is checked too
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _official_tiny_state_dict(seed=1):
    """Official key layout written from the fact sheet: network_layers.{k}.1 hidden, network_layers.{n}.0 output."""
    g = torch.Generator().manual_seed(seed)
    d_in, d_out, hidden = TINY["in_features"], TINY["out_features"], TINY["hidden_features"]
    sd, fan_in = {}, d_in
    for k, h in enumerate(hidden):
        sd[f"network_layers.{k}.1.weight"] = torch.randn(h, fan_in, generator=g)
        sd[f"network_layers.{k}.1.bias"] = torch.randn(h, generator=g)
        fan_in = d_in + h
    sd[f"network_layers.{len(hidden)}.0.weight"] = torch.randn(d_out, fan_in, generator=g)
    sd[f"network_layers.{len(hidden)}.0.bias"] = torch.randn(d_out, generator=g)
    return sd


def _manual_forward(sd, x, n_hidden):
    """Independent formula: y0 = gelu(W0 x + b0); yk = gelu(Wk [x, y] + bk); out = Wn [x, y] + bn."""
    y = F.gelu(F.linear(x, sd["network_layers.0.1.weight"], sd["network_layers.0.1.bias"]))
    for k in range(1, n_hidden):
        w, b = sd[f"network_layers.{k}.1.weight"], sd[f"network_layers.{k}.1.bias"]
        y = F.gelu(F.linear(torch.cat([x, y], -1), w, b))
    w, b = sd[f"network_layers.{n_hidden}.0.weight"], sd[f"network_layers.{n_hidden}.0.bias"]
    return F.linear(torch.cat([x, y], -1), w, b)


def test_full_size_parameter_count_and_keys_on_meta():
    with torch.device("meta"):
        model = ContextAdapter()
    assert sum(p.numel() for p in model.parameters()) == 130_041_344
    assert model.proj_out.weight.shape == (1536, 8192)
    official = [f"network_layers.{k}.1.{p}" for k in range(4) for p in ("weight", "bias")]
    official += ["network_layers.4.0.weight", "network_layers.4.0.bias"]
    sd = model.state_dict()
    converted = convert_official_context_adapter_state_dict({key: None for key in official})
    assert set(converted) == set(sd)


def test_shapes_and_tokenwise():
    model = _tiny()
    x = torch.randn(2, 9, 8)
    out = model(x)
    assert out.shape == (2, 9, 6)
    perm = torch.randperm(9)
    torch.testing.assert_close(model(x[:, perm]), out[:, perm])
    torch.testing.assert_close(model(x[1:, 3:4]), out[1:, 3:4])


def test_matches_formula_after_official_conversion():
    sd = _official_tiny_state_dict()
    model = tiny_context_adapter(**TINY)
    model.load_state_dict(convert_official_context_adapter_state_dict(sd), strict=True)
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(model(x), _manual_forward(sd, x, 3), atol=1e-5, rtol=1e-5)


def test_conversion_reports_missing_and_unexpected_keys():
    sd = _official_tiny_state_dict()
    del sd["network_layers.1.1.bias"]
    sd["network_layers.1.2.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"network_layers\.1\.1\.bias.*network_layers\.1\.2\.weight"):
        convert_official_context_adapter_state_dict(sd)
    with pytest.raises(ValueError, match="No official ContextAdapter keys"):
        convert_official_context_adapter_state_dict({"layers.0.weight": torch.zeros(1)})


def test_official_config_conversion():
    official = {"input_dims": 8, "output_dims": 6, "layer_depths": [5, 7, 4], "skips": [True] * 3,
                "use_biases": True, "pre_activation": False, "activation_fn": "gelu", "out_activation_fn": "linear",
                "_class_name": "ContextAdapter"}
    kwargs = convert_official_context_adapter_config(official)
    assert kwargs == {"in_features": 8, "out_features": 6, "hidden_features": (5, 7, 4), "activation": "gelu"}
    with pytest.raises(ValueError, match="pre_activation"):
        convert_official_context_adapter_config({**official, "pre_activation": True})


def test_init_is_xavier_uniform_with_zero_bias():
    torch.manual_seed(0)
    model = tiny_context_adapter(**TINY)
    for linear in [*model.layers, model.proj_out]:
        fan_out, fan_in = linear.weight.shape
        assert linear.weight.abs().max() <= (6.0 / (fan_in + fan_out)) ** 0.5
        assert torch.count_nonzero(linear.bias) == 0


def test_save_load_round_trip(tmp_path):
    model = _tiny()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = ContextAdapter.from_pretrained(tmp_path).eval()
    assert tuple(loaded.config.hidden_features) == (5, 7, 4)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(2, 4, 8)
    assert torch.equal(model(x), loaded(x))


def test_bad_input_raises():
    model = _tiny()
    with pytest.raises(ValueError, match="in_features=8"):
        model(torch.randn(2, 4, 7))
    with pytest.raises(ValueError, match="at least one"):
        ContextAdapter(hidden_features=())
    with pytest.raises(ValueError):
        ContextAdapter(**{**TINY, "activation": "nope"})


@pytest.mark.skipif(not os.path.exists(REF_FILE), reason="reference Neodragon code not available")
def test_matches_reference_implementation():
    spec = importlib.util.spec_from_file_location("_ref_neodragon_context_adapter", REF_FILE)
    ref_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref_module)
    torch.manual_seed(0)
    ref = ref_module.ContextAdapter(input_dims=TINY["in_features"], output_dims=TINY["out_features"],
                                   layer_depths=TINY["hidden_features"], skips=(True,) * 3).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    ours = tiny_context_adapter(**TINY)
    ours.load_state_dict(convert_official_context_adapter_state_dict(ref.state_dict()), strict=True)
    x = torch.randn(2, 11, 8)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)
