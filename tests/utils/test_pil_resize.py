import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_neodragon.utils.pil_resize import pil_lanczos_resize


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def _images(height, width):
    rng = np.random.default_rng(height * 1000 + width)
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ramps = np.clip(np.cumsum(rng.normal(0, 12, (height, width, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
    edges = np.where(rng.random((height, width, 1)) < 0.5, 0, 255).repeat(3, axis=2).astype(np.uint8)  # clipping
    return noise, ramps, edges


@pytest.mark.parametrize("size", [(128, 128, 64, 64), (96, 160, 48, 80), (37, 53, 20, 11), (30, 40, 45, 70),
                                  (16, 24, 16, 12), (50, 7, 17, 7)])
@pytest.mark.parametrize("device", DEVICES)
def test_equals_pillow_lanczos_on_8_bit_images(size, device):
    """Against Pillow itself: the same integers for down- and upscaling, odd ratios and an unchanged axis, on the
    CPU and on a GPU."""
    height, width, out_height, out_width = size
    for image in _images(height, width):
        expected = np.asarray(PIL.Image.fromarray(image).resize((out_width, out_height), PIL.Image.LANCZOS))
        ours = pil_lanczos_resize(torch.from_numpy(image).permute(2, 0, 1).float().to(device), out_height, out_width)
        assert ours.shape == (3, out_height, out_width) and ours.device.type == device
        np.testing.assert_array_equal(ours.permute(1, 2, 0).cpu().numpy(), expected.astype(np.float64))


def test_batches_resize_each_image_alone_and_sizes_are_checked():
    images = torch.from_numpy(np.stack(_images(40, 40)[:2])).permute(0, 3, 1, 2).float()
    both = pil_lanczos_resize(images, 20, 20)
    assert torch.equal(both[1], pil_lanczos_resize(images[1], 20, 20))
    with pytest.raises(ValueError, match="positive"):
        pil_lanczos_resize(images, 0, 20)
