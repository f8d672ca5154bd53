"""Captioned video readers on real mp4 files: frame sampling at a target fps, resize/crop, captions, and broken or
short files skipped with a message; metadata parsing; the ``datasets`` adapter; prompt files."""

import numpy as np
import pytest

from diffusers_neodragon.data.captioned_videos import (
    CaptionedClips,
    CaptionedVideoFolder,
    datasets_entries,
    read_metadata,
    sample_indices,
)
from diffusers_neodragon.data.prompts import load_prompts, read_prompt_file
from tests.data.video_files import frame_level, write_clip, write_clip_folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clip_folder(tmp_path_factory.mktemp("clips"))


def grey_levels(video):
    """Per-frame grey level (uint8 scale) of [3, F, H, W] in [-1, 1], away from the coloured square."""
    return ((video[:, :, -8:, -8:].mean(dim=(0, 2, 3)) + 1) * 127.5).numpy()


def test_sample_indices():
    assert sample_indices(5, 10.0, 5.0) == [0, 2, 4, 6, 8]
    assert sample_indices(3, 10.0, 5.0, start=0.5) == [5, 7, 9]
    assert sample_indices(3, 30.0, 12.0) == [0, 2, 5]
    assert sample_indices(3, None, 5.0) == [0, 1, 2]


def test_folder_dataset_samples_frames_and_skips_broken_files(clips, capsys):
    dataset = CaptionedVideoFolder(clips, clips / "metadata.jsonl", num_frames=9, height=32, width=32, fps=5)
    out = capsys.readouterr().out
    assert "skipping short.mp4" in out and "skipping broken.mp4: cannot be decoded" in out
    # clip1 starts at 0.5 s (source frame 5): 9 frames at stride 2 would need frames 5..21 of its 20
    assert "skipping clip1.mp4: 20 frames, fewer than the 22 needed" in out and "3 of 5 clips skipped" in out
    assert [name for name, _ in dataset.skipped] == ["short.mp4", "clip1.mp4", "broken.mp4"]
    assert len(dataset) == 2 and dataset.captions == [f"clip number {i} moving left" for i in (0, 2)]
    item = dataset[0]
    assert item["video"].shape == (3, 9, 32, 32) and item["caption"] == "clip number 0 moving left"
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    np.testing.assert_allclose(grey_levels(item["video"]), [frame_level(2 * k) for k in range(9)], atol=4)
    # at the source rate clip1 has its frames 5..13
    native = CaptionedVideoFolder(clips, clips / "metadata.jsonl", 9, 32, 32, verbose=False)
    assert len(native) == 3 and native.entries[1]["indices"] == list(range(5, 14))
    np.testing.assert_allclose(grey_levels(native[1]["video"]), [frame_level(k) for k in range(5, 14)], atol=4)
    batch = dataset.collate_fn([dataset[0], dataset[1]])
    assert batch["video"].shape == (2, 3, 9, 32, 32) and len(batch["caption"]) == 2


def test_metadata_csv_and_errors(clips, tmp_path):
    csv = tmp_path / "meta.csv"
    csv.write_text('file,caption,fps\nclip0.mp4,"a red square, moving",20\nclip2.mp4,blue,\n')
    rows = read_metadata(csv)
    assert rows[0] == {"file": "clip0.mp4", "caption": "a red square, moving", "fps": 20.0, "start": 0.0}
    assert rows[1]["fps"] is None
    # the fps column overrides the file's rate: 20 declared -> stride 4 at 5 fps
    dataset = CaptionedVideoFolder(clips, csv, num_frames=5, height=16, width=16, fps=5, verbose=False)
    assert dataset.entries[0]["indices"] == [0, 4, 8, 12, 16] and dataset.entries[1]["indices"] == [0, 2, 4, 6, 8]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"file": "clip0.mp4"}\n')
    with pytest.raises(ValueError, match="needs `file` and `caption`"):
        read_metadata(bad)
    with pytest.raises(ValueError, match=r"\.csv or \.jsonl"):
        read_metadata(clips / "clip0.mp4")
    with pytest.raises(ValueError, match="No usable clip"):
        CaptionedVideoFolder(clips, clips / "metadata.jsonl", num_frames=41, height=16, width=16, verbose=False)


def test_datasets_rows_with_paths_and_bytes(clips, tmp_path):
    rows = [
        {"video": str(clips / "clip0.mp4"), "caption": "from a path"},
        {"video": (clips / "clip2.mp4").read_bytes(), "caption": "from bytes"},
        {"video": {"path": None, "bytes": (clips / "broken.mp4").read_bytes()}, "caption": "broken bytes"},
    ]
    dataset = CaptionedClips(datasets_entries(rows), num_frames=9, height=16, width=16, fps=5, verbose=False)
    assert dataset.captions == ["from a path", "from bytes"] and dataset.skipped[0][0] == "row 2"
    np.testing.assert_allclose(grey_levels(dataset[1]["video"]), [frame_level(2 * k) for k in range(9)], atol=4)
    with pytest.raises(ValueError, match="no column 'text'"):
        datasets_entries(rows, caption_column="text")


def test_datasets_folder(clips, tmp_path):
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_dict({"video": [str(clips / "clip0.mp4"), "clip1.mp4"], "text": ["a", "b"]})
    table.save_to_disk(str(tmp_path / "ds"))
    from diffusers_neodragon.data.captioned_videos import CaptionedVideoTable

    # relative paths resolve against the dataset folder: clip1.mp4 is not there -> skipped
    dataset = CaptionedVideoTable(tmp_path / "ds", 9, 16, 16, caption_column="text", verbose=False)
    assert dataset.captions == ["a"] and len(dataset.skipped) == 1


def test_prompt_files(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\n\n  a dog  \n")
    assert read_prompt_file(path) == ["a cat", "a dog"] == load_prompts(path)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="holds no prompt"):
        read_prompt_file(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="does not exist"):
        read_prompt_file(tmp_path / "missing.txt")


def test_writer_makes_decodable_mp4(tmp_path):
    import imageio.v3 as iio

    assert len(list(iio.imiter(write_clip(tmp_path / "x.mp4", num_frames=3)))) == 3


def test_a_datasets_dataset_with_a_video_feature(clips):
    """A real ``datasets.Dataset`` built from a dict: a decoding ``datasets.Video`` column (bytes and paths) is read
    undecoded, the broken row skipped; without captions needed, a missing caption column gives empty captions."""
    datasets = pytest.importorskip("datasets")
    from diffusers_neodragon.data.captioned_videos import CaptionedVideoTable

    features = datasets.Features({"video": datasets.Video(), "caption": datasets.Value("string")})
    table = datasets.Dataset.from_dict({
        "video": [{"bytes": (clips / "clip2.mp4").read_bytes(), "path": None},
                  {"bytes": None, "path": str(clips / "clip0.mp4")},
                  {"bytes": (clips / "broken.mp4").read_bytes(), "path": None}],
        "caption": ["from bytes ", "from a path", "broken"]}, features=features)
    dataset = CaptionedVideoTable(table, 9, 16, 16, fps=5, verbose=False)
    assert dataset.captions == ["from bytes", "from a path"] and [n for n, _ in dataset.skipped] == ["row 2"]
    np.testing.assert_allclose(grey_levels(dataset[0]["video"]), [frame_level(2 * k) for k in range(9)], atol=4)
    uncaptioned = table.remove_columns("caption")
    with pytest.raises(ValueError, match="no column 'caption'"):
        CaptionedVideoTable(uncaptioned, 9, 16, 16, verbose=False)
    assert CaptionedVideoTable(uncaptioned, 9, 16, 16, verbose=False, captions=False).captions == ["", ""]
