"""benchmarks/pipeline_latency.py: parameters, DiT evaluations, latency and peak memory per pipeline folder, each
entry measured in its own process."""

import json

import pytest
import torch

from diffusers_neodragon import NeodragonPipeline
from tests.script_loading import load_script
from tests.tiny_components import monolithic_pipeline


def evaluations(pipe, **kwargs) -> int:
    """DiT evaluations of one call, counted from the denoising steps: two per step with CFG, one without."""
    calls = []
    pipe("a red circle moving left", output_type="latent", generator=torch.Generator().manual_seed(0),
         callback_on_step_end=lambda p, i, t, kw: calls.append(2 if p.do_classifier_free_guidance else 1) or {},
         **kwargs)
    return sum(calls)


def test_each_entry_reports_its_own_costs(tmp_path, capsys):
    latency = load_script("benchmarks/pipeline_latency.py")
    folder = tmp_path / "tiny"
    pipe = monolithic_pipeline(num_frames=9)
    pipe.save_pretrained(folder)
    rows = latency.main([f"one={folder} --steps 1 --first-frame-steps 1", f"two={folder} --steps 2",
                         "--device", "cpu", "--threads", "1", "--repeats", "2", "--json", str(tmp_path / "rows.json")])
    assert [r["label"] for r in rows] == ["one", "two"]
    loaded = NeodragonPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert rows[0]["nfe"] == evaluations(loaded, video_num_inference_steps=1, num_inference_steps=1)
    assert rows[1]["nfe"] == evaluations(loaded, video_num_inference_steps=2)
    assert rows[0]["nfe"] < rows[1]["nfe"] and rows[0]["first_frame_nfe"] == 0
    expected = sum(p.numel() for p in loaded.transformer.parameters())
    assert all(r["parameters"]["transformer"] == expected for r in rows)
    assert all(len(r["seconds"]) == 2 and r["seconds_median"] > 0 and r["peak_memory_bytes"] > 0 for r in rows)
    assert rows[0]["video"] == [9, *rows[0]["video"][1:]]
    assert json.loads((tmp_path / "rows.json").read_text()) == rows
    assert "| one |" not in capsys.readouterr().out  # plain table without --markdown


def test_bad_entries_are_refused():
    latency = load_script("benchmarks/pipeline_latency.py")
    with pytest.raises(Exception, match="LABEL=FOLDER"):
        latency.parse_entry("no-label-here")
    with pytest.raises(Exception, match="bad options"):
        latency.parse_entry("x=folder --unknown 3")
