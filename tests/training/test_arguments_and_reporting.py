"""Model cards of training runs, argument parsing and validation strips."""


import torch

from diffusers_neodragon.training_utils import (
    parse_resolution,
    video_strip,
)
from diffusers_neodragon.utils.model_cards import render_model_card, write_model_card


def test_model_card_and_small_utilities(tmp_path):
    template = tmp_path / "t.md"
    template.write_text("---\nlicense: mit\n---\na {{ x }} b {{y}} {{ missing }} {{ empty }}\n")
    assert render_model_card(template, {"x": 1, "y": "two", "empty": None}).text.strip() == "a 1 b two n/a n/a"
    path = write_model_card(tmp_path, "vae.md", {"title": "T", "psnr": "30.1", "command": "accelerate launch x"},
                            tags=["shapes", "neodragon"])
    text = path.read_text()
    assert "# T" in text and "30.1" in text and "accelerate launch x" in text and "{{" not in text
    assert text.count("- neodragon") == 1 and "- shapes" in text
    assert parse_resolution("64x128") == (64, 128) and parse_resolution(96) == (96, 96)
    strip = video_strip([torch.zeros(3, 9, 8, 8), torch.ones(3, 2, 8, 8)], max_frames=4)
    assert strip.size == (32, 16)


def test_training_command_masks_the_hub_token():
    from diffusers_neodragon.training_utils.arguments import training_command

    command = training_command("training/x.py", ["--hub_token", "secret", "--hub_token=other", "--seed", "1"])
    assert command == "accelerate launch training/x.py --hub_token '***' '--hub_token=***' --seed 1"
    assert "secret" not in command and "other" not in command
