"""Shared fixtures of the export tests: the tiny pipeline and its export (done once per test session)."""

import pytest


SIZE = dict(height=64, width=64, num_frames=17)


@pytest.fixture(scope="session")
def tiny_pipe():
    import torch

    from tests.tiny_components import pipeline

    pipe = pipeline()
    # QuickSRNet starts as exact nearest-neighbour upsampling (zero-initialised last conv): give that conv weights,
    # so the exported super-resolution graph is compared on a non-trivial function.
    with torch.no_grad():
        conv = pipe.super_resolution.conv_out
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(0)) * 0.2)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    return pipe


@pytest.fixture(scope="session")
def tiny_export(tiny_pipe, tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from diffusers_neodragon.export.exporter import export_pipeline
    from diffusers_neodragon.export.specs import ExportSize

    folder = tmp_path_factory.mktemp("tiny_export")
    manifest = export_pipeline(tiny_pipe, folder, ExportSize(**SIZE), backend="torch")
    return folder, manifest
