"""Checkpoint folders and a run's VAE."""

import json

import pytest
import torch

from diffusers_neodragon import CausalVideoVAE
from diffusers_neodragon.training_utils import (
    checkpoint_step,
    list_checkpoints,
    load_vae_folder,
    prune_checkpoints,
    resolve_resume_checkpoint,
)
from tests.tiny_components import tiny_causal_vae


def test_checkpoint_rotation_and_resolution(tmp_path):
    assert resolve_resume_checkpoint(tmp_path, "latest") is None
    assert resolve_resume_checkpoint(tmp_path, None) is None
    for step in (2, 10, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-x").mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4, 10]
    assert resolve_resume_checkpoint(tmp_path, "latest").name == "checkpoint-10"
    assert resolve_resume_checkpoint(tmp_path, "checkpoint-4") == tmp_path / "checkpoint-4"
    with pytest.raises(ValueError):
        resolve_resume_checkpoint(tmp_path, "checkpoint-7")
    assert checkpoint_step(tmp_path / "checkpoint-10") == 10
    removed = prune_checkpoints(tmp_path, total_limit=2)  # keeps room for the next one
    assert [p.name for p in removed] == ["checkpoint-2", "checkpoint-4"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10]
    assert prune_checkpoints(tmp_path, None) == []


def test_load_vae_folder_finds_the_vae_of_a_vae_folder_or_of_a_folder_holding_vae(tmp_path):
    vae = tiny_causal_vae()
    vae.save_pretrained(tmp_path / "run" / "vae")
    vae.save_pretrained(tmp_path / "bare")
    for folder in (tmp_path / "run", tmp_path / "bare"):
        loaded = load_vae_folder(folder)  # class from the config's _class_name
        assert type(loaded) is CausalVideoVAE and next(loaded.parameters()).dtype == torch.float32
        assert torch.equal(loaded.encoder.conv_in.conv.weight, vae.encoder.conv_in.conv.weight)
    assert next(load_vae_folder(tmp_path / "bare", torch.float16).parameters()).dtype == torch.float16
    config = json.loads((tmp_path / "bare" / "config.json").read_text())
    (tmp_path / "bare" / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="no diffusers_neodragon VAE"):
        load_vae_folder(tmp_path / "bare")
    assert type(load_vae_folder(tmp_path / "bare", cls=CausalVideoVAE)) is CausalVideoVAE  # an explicit class wins
