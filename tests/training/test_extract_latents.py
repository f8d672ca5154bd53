"""training/extract_latents.py on real mp4 files, then train_pyramidal_flow.py from the shards: the shards hold what
the videos encode to, an interrupted extraction resumes, and a training step from shards sees the same batch (same
loss) as one from the videos."""

import json

import numpy as np
import pytest
import torch

from diffusers_neodragon.data.latent_shards import LatentShards
from diffusers_neodragon.data.shapes_text_encoders import build_shapes_text_encoders
from diffusers_neodragon.training_utils import latent_extraction
from diffusers_neodragon.training_utils.latent_cache import encode_videos, latents_from_shards
from diffusers_neodragon.training_utils.prompts import encode_prompts
from tests.data.video_files import write_clip_folder
from tests.script_loading import load_script
from tests.tiny_components import tiny_causal_vae


extract = load_script("training/extract_latents.py")
train = load_script("training/train_pyramidal_flow.py")
TEXT = dict(seed=0, t5_dim=32, t5_heads=2, t5_layers=1, clip_dim=16, clip_heads=2, clip_projection_dim=8,
            t5_max_length=24)
DATA = ["--resolution", "64", "--num_frames", "9", "--fps", "5", "--max_sequence_length", "24"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    clips = write_clip_folder(root / "clips")
    vae = tiny_causal_vae(seed=0)
    vae.save_pretrained(root / "vae" / "vae")
    text = build_shapes_text_encoders("clip number 0 1 2 moving left".split(), **TEXT)
    for name, component in text.items():
        if component is not None:
            component.save_pretrained(root / "text" / name)
    return root, clips


def extract_args(root, clips, out, *extra):
    return extract.parse_args([*DATA, "--vae_path", str(root / "vae"), "--text_encoders_path", str(root / "text"),
                               "--video_folder", str(clips), "--output_dir", str(out), "--samples_per_shard", "1",
                               "--text_features", *extra])


def test_extraction_resumes_and_matches_the_videos(setup, tmp_path, monkeypatch):
    root, clips = setup
    out = tmp_path / "latents"
    real_write = latent_extraction.write_shard
    calls = []

    def crash_after_one(*args, **kwargs):
        if calls:
            raise RuntimeError("interrupted")
        calls.append(args[1])
        return real_write(*args, **kwargs)

    monkeypatch.setattr(latent_extraction, "write_shard", crash_after_one)
    with pytest.raises(RuntimeError, match="interrupted"):
        extract.main(extract_args(root, clips, out))
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.safetensors"]  # no partial file left
    with pytest.raises(ValueError, match="has no index.jsonl"):
        LatentShards(out)
    first = (out / "shards" / "00000.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(latent_extraction, "write_shard", real_write)
    result = extract.main(extract_args(root, clips, out))
    assert result["skipped"] == [0] and result["written"] == [1] and result["num_shards"] == 2
    assert (out / "shards" / "00000.safetensors").stat().st_mtime_ns == first
    lines = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [(x["shard"], x["index"], x["caption"]) for x in lines] == [
        ("shards/00000.safetensors", 0, "clip number 0 moving left"),
        ("shards/00001.safetensors", 0, "clip number 2 moving left")]
    # Another VAE's settings are refused, not mixed in.
    with pytest.raises(ValueError, match="other settings"):
        extract.main(extract_args(root, clips, out, "--resolution", "128"))

    # The shards hold what the videos encode to.
    args = extract_args(root, clips, tmp_path / "unused")
    from diffusers_neodragon.training_utils.prompts import load_text_components
    from diffusers_neodragon.training_utils.video_data import video_dataset_from_args

    dataset = video_dataset_from_args(args, verbose=False)
    vae = tiny_causal_vae(seed=0).eval()
    text = load_text_components(str(root / "text"))
    cache = latents_from_shards(out, text, "cpu", 24, vae)
    videos = dataset.collate_fn([dataset[0], dataset[1]])
    torch.testing.assert_close(cache.latents, encode_videos(vae, videos["video"]), rtol=1e-5, atol=1e-5)
    embeds, mask, pooled = encode_prompts(text, videos["caption"], "cpu", 24)
    rows = cache.caption_ids
    keep = int(mask.sum(1).max())
    torch.testing.assert_close(cache.embeds[rows][:, :keep], embeds[:, :keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.mask[rows][:, :keep], mask[:, :keep])
    torch.testing.assert_close(cache.pooled[rows], pooled, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="another VAE"):
        latents_from_shards(out, text, "cpu", 24, tiny_causal_vae(seed=1))


TRAIN = ["--num_layers", "1", "--num_attention_heads", "2", "--attention_head_dim", "16", "--train_batch_size", "2",
         "--report_to", "none", "--max_train_steps", "1", "--num_validation_prompts", "0", "--no-use_ema",
         "--checkpointing_steps", "0", "--seed", "0", "--caption_dropout", "0.5"]


def test_training_from_shards_equals_training_from_videos(setup, tmp_path):
    root, clips = setup
    out = tmp_path / "latents"
    extract.main(extract_args(root, clips, out))
    common = [*DATA, *TRAIN, "--vae_path", str(root / "vae"), "--text_encoders_path", str(root / "text")]
    from_shards = train.main(train.parse_args([*common, "--latents_dir", str(out), "--output_dir",
                                               str(tmp_path / "a")]))
    from_videos = train.main(train.parse_args([*common, "--video_folder", str(clips), "--output_dir",
                                               str(tmp_path / "b")]))
    assert from_shards["global_step"] == from_videos["global_step"] == 1 and np.isfinite(from_shards["loss"])
    np.testing.assert_allclose(from_shards["loss"], from_videos["loss"], rtol=1e-4)
    card = (tmp_path / "a" / "README.md").read_text()
    assert f"2 clips of latents_dir={out}" in card
    # A fine-tune from the shards on the model's own histories (how a model trained on them keeps its temporal
    # consistency): the histories are sampled from the stored latents.
    own = train.main(train.parse_args([*common, "--latents_dir", str(out), "--transformer_path",
                                       str(tmp_path / "a" / "transformer"), "--generated_history_prob", "1",
                                       "--output_dir", str(tmp_path / "own")]))
    assert own["global_step"] == 1 and np.isfinite(own["loss"])
    assert "replaced with probability 1 by" in (tmp_path / "own" / "README.md").read_text()
    with pytest.raises(ValueError, match="one data source"):
        train.parse_args([*common, "--latents_dir", str(out), "--video_folder", str(clips)])
    with pytest.raises(ValueError, match="latents of shape"):
        train.main(train.parse_args([*common, "--latents_dir", str(out), "--resolution", "128", "--output_dir",
                                     str(tmp_path / "c")]))


def test_extraction_from_webdataset_shards(setup, tmp_path):
    """Tar shards (<key>.mp4 + <key>.txt): latent shard i holds tar i's good clips (a tar of broken clips gives an
    empty shard), process r reads only tars r, r + n, ..., and the latents equal the video folder's."""
    pytest.importorskip("webdataset")
    import io
    import tarfile

    from diffusers_neodragon.data.webdataset_clips import WebDatasetClips

    root, clips = setup
    tars = tmp_path / "tars"
    tars.mkdir()
    contents = [[("clip0", "clip0.mp4", "clip number 0 moving left"), ("bad", "broken.mp4", "broken")],
                [("clip2", "clip2.mp4", "clip number 2 moving left")], [("bad2", "broken.mp4", "broken")]]
    for number, samples in enumerate(contents):
        with tarfile.open(tars / f"{number:03d}.tar", "w") as tar:
            for key, file, caption in samples:
                for name, data in ((f"{key}.mp4", (clips / file).read_bytes()), (f"{key}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "latents"
    args = extract.parse_args([*DATA, "--vae_path", str(root / "vae"), "--text_encoders_path", str(root / "text"),
                               "--webdataset", str(tars), "--output_dir", str(out), "--text_features"])
    vae = tiny_causal_vae(seed=0).eval()
    second = WebDatasetClips(tars, 9, 64, 64, fps=5, process_index=1, num_processes=2, verbose=False)
    assert second.shards == [str(tars / "001.tar")]
    extract.main(args)
    settings = dict(text_components=None, source="x", process_index=1, num_processes=2, show_progress=False)
    with pytest.raises(ValueError, match="other settings"):  # without text features: another extraction
        latent_extraction.extract_latent_shards(second, vae, out, **settings)
    result = latent_extraction.extract_latent_shards(second, vae, tmp_path / "two", **settings)
    assert result == {"written": [1], "skipped": [], "num_shards": 3}
    assert not (tmp_path / "two" / "index.jsonl").exists()  # the main process writes it at the end
    first = WebDatasetClips(tars, 9, 64, 64, fps=5, process_index=0, num_processes=2, verbose=False)
    result = latent_extraction.extract_latent_shards(first, vae, tmp_path / "two", **{**settings, "process_index": 0})
    assert result["written"] == [0, 2] and len(first.skipped) == 2

    for folder in (out, tmp_path / "two"):
        lines = [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]
        assert [(x["shard"], x["caption"]) for x in lines] == [
            ("shards/00000.safetensors", "clip number 0 moving left"),
            ("shards/00001.safetensors", "clip number 2 moving left")]
    from diffusers_neodragon.training_utils.prompts import load_text_components
    from diffusers_neodragon.training_utils.video_data import video_dataset_from_args

    folder_args = extract_args(root, clips, tmp_path / "unused")
    dataset = video_dataset_from_args(folder_args, verbose=False)
    videos = dataset.collate_fn([dataset[0], dataset[1]])
    cache = latents_from_shards(out, load_text_components(str(root / "text")), "cpu", 24, vae)
    torch.testing.assert_close(cache.latents, encode_videos(vae, videos["video"]), rtol=1e-5, atol=1e-5)


def test_every_text_module_is_one_the_scripts_move_to_their_device(setup, tmp_path):
    """A text-distilled folder's ContextAdapter is a module too: the scripts move TEXT_MODULE_NAMES to the GPU, and
    an adapter left on the CPU failed the first GPU run of the chain (mat1 on cuda:0, weights on cpu)."""
    import shutil

    from diffusers_neodragon.training_utils.prompts import TEXT_MODULE_NAMES, load_text_components
    from tests.tiny_components import tiny_context_adapter

    root, _ = setup
    shutil.copytree(root / "text", tmp_path / "text")
    tiny_context_adapter().save_pretrained(tmp_path / "text" / "context_adapter")
    text = load_text_components(str(tmp_path / "text"))
    modules = {name for name, value in text.items() if isinstance(value, torch.nn.Module)}
    assert "context_adapter" in modules and modules <= set(TEXT_MODULE_NAMES)
