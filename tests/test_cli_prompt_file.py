"""``neodragon generate --prompts FILE``: the same videos from two processes (torchrun, gloo on the CPU) as from one,
and the bad-input errors (exit code 2, one line, nothing loaded or written)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffusers_neodragon_cli import main


ROOT = Path(__file__).resolve().parents[1]
PROMPTS = "a red circle moving left\n\na blue square\na green triangle moving up\n"
TINY = ["--mode", "monolithic", "--frames", "9", "--height", "64", "--width", "64", "--steps", "1",
        "--first-frame-steps", "1", "--threads", "1", "--seed", "3"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.tiny_components import pipeline

    folder = tmp_path_factory.mktemp("tiny") / "model"
    pipeline(with_first_frame=False, with_super_resolution=False).save_pretrained(folder)
    return folder


@pytest.mark.distributed
def test_two_processes_write_the_same_videos_as_one(tiny_model, tmp_path):
    """Each prompt's video is byte-equal whether one process made all three or two processes shared them."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    args = ["generate", "--prompts", str(prompts), "--model", str(tiny_model), *TINY]
    assert main([*args, "--output-dir", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "diffusers_neodragon_cli"]
    done = subprocess.run([*launch, *args, "--output-dir", str(tmp_path / "two")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[process 1] wrote" in done.stdout and "written by 2 process(es)" in done.stdout, done.stdout
    names = ["00000.mp4", "00001.mp4", "00002.mp4", "manifest.jsonl"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


@pytest.fixture
def no_loading(monkeypatch):
    from diffusers_neodragon import NeodragonPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded for a usage error")

    monkeypatch.setattr(NeodragonPipeline, "from_pretrained", refuse)


# (arguments after `generate`, message after "neodragon: error: "); {tmp} holds prompts.txt, empty.txt, bad.jsonl,
# a folder/ and a file.mp4
USAGE_ERRORS = [
    (["a cat", "--prompts", "{tmp}/prompts.txt"], "give a prompt or --prompts {tmp}/prompts.txt, not both"),
    (["--prompts", "{tmp}/missing.txt"], "--prompts {tmp}/missing.txt: no such file"),
    (["--prompts", "{tmp}/folder"],
     "--prompts {tmp}/folder: is a folder; give a text file with one prompt per line (or .jsonl)"),
    (["--prompts", "{tmp}/empty.txt"], "--prompts {tmp}/empty.txt: {tmp}/empty.txt holds no prompt."),
    (["--prompts", "{tmp}/bad.jsonl"], "--prompts {tmp}/bad.jsonl: {tmp}/bad.jsonl line 1 has no non-empty "
     "\"prompt\" string; write {{\"prompt\": \"a red circle moving left\"}}."),
    (["--prompts", "{tmp}/prompts.txt", "--output-dir", "{tmp}/file.mp4"],
     "--output-dir {tmp}/file.mp4: is a file; give a folder for the videos and manifest.jsonl"),
    (["--prompts", "{tmp}/prompts.txt", "--output-dir", "{tmp}/file.mp4/videos"],
     "--output-dir {tmp}/file.mp4/videos: {tmp}/file.mp4 is a file, not a folder"),
    (["--prompts", "{tmp}/prompts.txt", "--output", "{tmp}/out.mp4"],
     "--output names one video; with --prompts give the folder as --output-dir (got --output {tmp}/out.mp4)"),
    (["a cat", "--output-dir", "{tmp}/videos"], "--output-dir goes with --prompts FILE; for one prompt give "
     "--output NAME.mp4"),
    (["--prompts", "{tmp}/prompts.txt", "--video-format", "webm"],
     "argument --video-format: invalid choice: 'webm' (choose from 'mp4', 'mkv', 'mov', 'avi', 'gif')"),
]


@pytest.mark.parametrize("args, message", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_prompt_file_usage_errors(args, message, tiny_model, tmp_path, capsys, no_loading):
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "bad.jsonl").write_text('{"text": "a cat"}\n')
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.mp4").write_bytes(b"x")
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["generate", *[a.format(tmp=tmp_path) for a in args], "--model", str(tiny_model), "--mode", "monolithic"]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"neodragon: error: {message.format(tmp=tmp_path)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
