import torch
from torch import nn

from diffusers_neodragon.utils.shared_weights import bytes_held, share_equal_tensors


def two_layer(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))


def test_only_equal_namesakes_are_shared_and_outputs_stay():
    source, target = two_layer(0), two_layer(1)
    target[0].load_state_dict(source[0].state_dict())  # layer 0 equal, layer 2 not; LayerNorm's init is equal
    x = torch.randn(5, 4)
    before = target(x).detach()
    held = bytes_held(source, target)
    saved = share_equal_tensors(source, target)
    shared = [name for name, p in target.named_parameters() if p is dict(source.named_parameters())[name]]
    assert shared == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert saved == 4 * (8 * 4 + 8 + 8 + 8) and bytes_held(source, target) == held - saved
    torch.testing.assert_close(target(x), before, rtol=0, atol=0)


def test_other_dtypes_and_shapes_stay_apart_and_shared_tensors_move_together():
    source, target = two_layer(0), two_layer(0)
    assert share_equal_tensors(source, nn.Sequential(nn.Linear(4, 16))) == 0  # same names, other shapes
    assert share_equal_tensors(source, two_layer(0).double()) == 0  # same values, another dtype
    target[2].bias.data += 1
    share_equal_tensors(source, target)
    assert target[2].bias is not source[2].bias and target[2].weight is source[2].weight
    source.double()  # moves the shared tensors for both models; the target's own stays as it was
    assert target[2].weight.dtype == torch.float64 and target[2].bias.dtype == torch.float32
