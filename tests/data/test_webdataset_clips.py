"""WebDataset tar shards of real mp4 files: frames and captions as the folder reader gives them, bad samples skipped
with a reason, every process (and DataLoader worker) reading only its own shards."""

import io
import tarfile

import numpy as np
import pytest
import torch

from tests.data.test_captioned_videos import grey_levels
from tests.data.video_files import frame_level, write_clip


pytest.importorskip("webdataset")
from diffusers_neodragon.data.webdataset_clips import WebDatasetClips, shard_urls  # noqa: E402


def add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """shard 0: a (good), b (broken mp4); shard 1: c (good, from 0.5 s), d (no caption)."""
    root = tmp_path_factory.mktemp("wds")
    video = write_clip(root / "clip.mp4").read_bytes()
    with tarfile.open(root / "train-000.tar", "w") as tar:
        add(tar, "a.mp4", video), add(tar, "a.txt", b"clip a moving left")
        add(tar, "b.mp4", b"\x00\x00\x00\x18ftypmp42 not a video"), add(tar, "b.txt", b"broken")
    with tarfile.open(root / "train-001.tar", "w") as tar:
        add(tar, "c.mp4", video), add(tar, "c.txt", b" clip c \n")
        add(tar, "d.mp4", video)
    return root


def test_two_shards_give_frames_captions_and_skip_bad_samples(shards, capsys):
    data = WebDatasetClips(shards, num_frames=9, height=16, width=16, fps=5)
    items = list(data)
    assert [i["caption"] for i in items] == ["clip a moving left", "clip c"]
    assert items[0]["video"].shape == (3, 9, 16, 16)
    np.testing.assert_allclose(grey_levels(items[0]["video"]), [frame_level(2 * k) for k in range(9)], atol=4)
    assert [(name.rsplit(":", 1)[1], why.split(" ")[0]) for name, why in data.skipped] == [("b", "cannot"),
                                                                                          ("d", "no")]
    assert "skipping" in capsys.readouterr().out
    batch = data.collate_fn(items)
    assert batch["video"].shape == (2, 3, 9, 16, 16) and batch["caption"][1] == "clip c"


def test_each_process_and_worker_reads_its_own_shards(shards):
    per_process = [[i["caption"] for i in WebDatasetClips(shards, 9, 16, 16, fps=5, process_index=r,
                                                          num_processes=2, verbose=False)] for r in range(2)]
    assert per_process == [["clip a moving left"], ["clip c"]]
    data = WebDatasetClips(str(shards / "train-{000..001}.tar"), 9, 16, 16, fps=5, verbose=False)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    assert sorted(i["caption"] for i in loader) == ["clip a moving left", "clip c"]  # each clip once
    shuffled = WebDatasetClips(shards, 9, 16, 16, fps=5, seed=0, verbose=False)
    orders = set()
    for epoch in range(6):
        shuffled.set_epoch(epoch)
        orders.add(tuple(shuffled.worker_shards()))
    assert len(orders) == 2  # the shard order changes with the epoch
    with pytest.raises(ValueError, match="every process needs its own shard"):
        WebDatasetClips(shards, 9, 16, 16, process_index=0, num_processes=3)
    with pytest.raises(ValueError, match="No tar shard"):
        shard_urls(str(shards / "*.tgz"))
    with pytest.raises(ValueError, match="do not exist"):
        shard_urls(str(shards / "train-{000..002}.tar"))
