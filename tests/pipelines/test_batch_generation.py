"""generate_prompt_file (one video per prompt of a file, split across processes, resumable) in one process; the
two-process run against this one is in tests/test_cli_prompt_file.py."""

import json
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_neodragon.pipelines.neodragon.batch_generation import (
    MANIFEST_NAME,
    PromptJob,
    generate_prompt_file,
    plan_jobs,
    read_prompts,
)
from tests.tiny_components import pipeline


PROMPTS = ["a red circle moving left", "a blue square", "a green triangle moving up"]
SETTINGS = dict(mode="monolithic", height=64, width=64, num_frames=9, num_inference_steps=1,
                video_num_inference_steps=1)


class FakePipe:
    """Frames from the generator alone (fast): tells which prompts and seeds were generated."""

    device = torch.device("cpu")

    def __init__(self):
        self.calls = []

    def __call__(self, prompt, generator, output_type, **kwargs):
        self.calls.append(prompt)
        value = int(torch.randint(0, 255, (1,), generator=generator))
        return SimpleNamespace(frames=[[PIL.Image.new("RGB", (16, 16), (value, 0, 0))] * 9])


def _read_frames(path):
    import imageio.v3 as iio

    return iio.imread(path)


def test_three_prompts_give_index_named_videos_seeded_by_index_and_a_manifest(tmp_path):
    """Each video is the pipeline's output for its prompt with seed + index, whatever came before it."""
    pipe = pipeline(with_first_frame=False, with_super_resolution=False)
    out = tmp_path / "videos"
    result = generate_prompt_file(pipe, PROMPTS, out, seed=10, fps=8, **SETTINGS)
    assert [job.file for job in result.generated] == ["00000.mp4", "00001.mp4", "00002.mp4"] and not result.skipped
    assert sorted(p.name for p in out.iterdir()) == ["00000.mp4", "00001.mp4", "00002.mp4", MANIFEST_NAME]
    manifest = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    assert manifest == [dict(index=i, prompt=p, seed=10 + i, file=f"0000{i}.mp4") for i, p in enumerate(PROMPTS)]
    # the third prompt alone, seed 12, written the same way: the same file, byte for byte
    alone = tmp_path / "alone"
    generate_prompt_file(pipe, [PROMPTS[2]], alone, seed=12, fps=8, **SETTINGS)
    assert (alone / "00000.mp4").read_bytes() == (out / "00002.mp4").read_bytes()
    frames = _read_frames(out / "00002.mp4")
    assert frames.shape == (9, 64, 64, 3)
    assert not np.array_equal(frames, _read_frames(out / "00001.mp4"))  # another prompt and seed


def test_a_relaunch_skips_finished_videos_and_ignores_partial_ones(tmp_path):
    out = tmp_path / "videos"
    first = FakePipe()
    generate_prompt_file(first, PROMPTS, out, seed=0)
    assert first.calls == PROMPTS
    kept = {name: (out / name).stat().st_mtime_ns for name in ("00000.mp4", "00002.mp4")}
    reference = (out / "00001.mp4").read_bytes()
    (out / "00001.mp4").unlink()  # as if killed while writing it: only a temporary file was left
    (out / ".00001.abc123.mp4").write_bytes(b"partial")
    again = FakePipe()
    result = generate_prompt_file(again, PROMPTS, out, seed=0)
    assert again.calls == [PROMPTS[1]]
    assert [job.index for job in result.generated] == [1] and [job.index for job in result.skipped] == [0, 2]
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    assert (out / "00001.mp4").read_bytes() == reference
    done = FakePipe()
    assert not generate_prompt_file(done, PROMPTS, out, seed=0).generated and done.calls == []


def test_a_folder_made_from_other_prompts_or_seed_is_not_resumed(tmp_path):
    out = tmp_path / "videos"
    generate_prompt_file(FakePipe(), PROMPTS, out, seed=0)
    with pytest.raises(ValueError, match="was made from prompt 'a red circle moving left' with seed 0, now "
                       "'a red circle moving left' with seed 5.*use a new output folder"):
        generate_prompt_file(FakePipe(), PROMPTS, out, seed=5)
    with pytest.raises(ValueError, match="00000.mp4 was made from prompt 'a red circle moving left'.*now 'a cat'"):
        generate_prompt_file(FakePipe(), ["a cat", *PROMPTS[1:]], out, seed=0)
    more = FakePipe()  # more prompts after the same ones: a continuation
    generate_prompt_file(more, [*PROMPTS, "a white diamond"], out, seed=0)
    assert more.calls == ["a white diamond"]


def test_the_pipelines_own_per_prompt_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="sets 'generator' itself"):
        generate_prompt_file(FakePipe(), PROMPTS, tmp_path, generator=torch.Generator())


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file.mp4").write_bytes(b"x")
    with pytest.raises(ValueError, match="file.mp4 is a file; give a folder"):
        generate_prompt_file(FakePipe(), PROMPTS, tmp_path / "file.mp4")
    with pytest.raises(ValueError, match="file.mp4 is a file, not a folder"):
        generate_prompt_file(FakePipe(), PROMPTS, tmp_path / "file.mp4" / "videos")


def test_prompt_files_text_and_jsonl(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("a red circle\n\n  a blue square  \n")
    assert read_prompts(text) == ["a red circle", "a blue square"]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"prompt": "a red circle", "id": 7}\n\n{"prompt": "a blue square"}\n')
    assert read_prompts(jsonl) == ["a red circle", "a blue square"]


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", "\n  \n", "holds no prompt"),
    ("empty.jsonl", "", "holds no prompt"),
    ("bad.jsonl", '{"prompt": "a"}\nnot json\n', "line 2 is not JSON"),
    ("missing_field.jsonl", '{"text": "a"}\n', "line 1 has no non-empty \"prompt\" string"),
    ("missing.txt", None, "does not exist"),
])
def test_bad_prompt_files_are_named(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_prompts(path)
    with pytest.raises(ValueError, match="is a folder"):
        read_prompts(tmp_path)


def test_plan_names_and_seeds():
    jobs = plan_jobs(["a"] * 3, seed=4, extension=".gif")
    assert jobs[2] == PromptJob(2, "a", 6, "00002.gif")
    assert plan_jobs(["a"] * 100001)[-1].file == "100000.mp4"  # wider names past 99999 prompts
    with pytest.raises(ValueError, match="must stay in \\[0, 2\\*\\*63\\)"):
        plan_jobs(["a", "b"], seed=2**63 - 1)
    with pytest.raises(ValueError, match="not one of"):
        plan_jobs(["a"], extension=".webm")
    with pytest.raises(ValueError, match="at least one"):
        plan_jobs([])
