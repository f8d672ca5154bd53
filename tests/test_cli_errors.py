"""Issue 21's bad-input table: every mistake on the command line gets one line on stderr (``neodragon: error: ...``),
exit code 2 for a bad argument (found before any weight loads) and 1 for a failure while loading or generating, no
traceback without ``--debug``, and a failed run leaves nothing at the output path.

``python tests/test_cli_errors.py`` prints the table (input, message, exit code, time to fail).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving left on a blue background"

# (arguments after `generate PROMPT`, exact message after "neodragon: error: ") -- all exit code 2, all before loading.
# {tmp} is a scratch folder holding: notes.txt (text), folder/ (a folder), readonly/ (not writable).
USAGE_ERRORS = [
    (["--frames", "10"], "--frames 10: must be 8k+1 (1, 9, 17, ...); the model's default is 49"),
    (["--frames", "0"], "argument --frames: must be an integer >= 1, got 0"),
    (["--height", "100"], "--height 100: the model takes multiples of 64 up to 256; the model's default is 128x128"),
    (["--height", "320", "--width", "512"],
     "--height 320: the model takes multiples of 64 up to 256 (its position grid); the model's default is 128x128"),
    (["--width", "-64"], "argument --width: must be an integer >= 1, got -64"),
    (["--steps", "0"], "argument --steps: takes comma-separated positive ints such as 1,1,1; got '0'"),
    (["--steps", "one"], "argument --steps: takes comma-separated positive ints such as 1,1,1; got 'one'"),
    (["--steps", "1,1"], "--steps 1,1: give one count or 3 (one per pyramid stage), got 2"),
    (["--first-frame-steps", "1,1,1,1"],
     "--first-frame-steps 1,1,1,1: give one count or 3 (one per pyramid stage), got 4"),
    (["--guidance-scale", "nan"],
     "argument --guidance-scale: must be a number in [0, 100] (guidance is off at <= 1), got 'nan'"),
    (["--guidance-scale", "inf"],
     "argument --guidance-scale: must be a number in [0, 100] (guidance is off at <= 1), got 'inf'"),
    (["--guidance-scale", "-1"],
     "argument --guidance-scale: must be a number in [0, 100] (guidance is off at <= 1), got '-1'"),
    (["--video-guidance-scale", "1e30"],
     "argument --video-guidance-scale: must be a number in [0, 100] (guidance is off at <= 1), got '1e30'"),
    (["--history-noise", "1"], "argument --history-noise: must be a number in [0, 1), got '1'"),
    (["--history-noise", "nan"], "argument --history-noise: must be a number in [0, 1), got 'nan'"),
    (["--seed", str(2**70)], f"argument --seed: must be an integer in [0, 2**63), got {2**70}"),
    (["--seed", "-1"], "argument --seed: must be an integer in [0, 2**63), got -1"),
    (["--seed", "1.5"], "argument --seed: must be an integer in [0, 2**63), got '1.5'"),
    (["--fps", "0"], "argument --fps: must be an integer >= 1, got 0"),
    (["--threads", "0"], "argument --threads: must be an integer >= 1, got 0"),
    (["--decode-chunk-size", "0"], "argument --decode-chunk-size: must be an integer >= 1, got 0"),
    (["--mode", "fast"], "argument --mode: invalid choice: 'fast' (choose from 'hybrid', 'monolithic')"),
    (["--mode", "hybrid"], "--mode hybrid takes its first frame from --image or the model's first_frame_pipeline, "
     "which this model does not have; pass --image or --mode monolithic"),
    (["--colour", "red"], "unrecognized arguments: --colour red"),
    (["--device", "cuda"], "--device cuda: CUDA is not available here; use --device cpu"),
    (["--device", "gpu0"], "--device gpu0: not a torch device (such as cpu, cuda, cuda:1)"),
    (["--model", "/nonexistent"], "--model /nonexistent: no such folder"),
    (["--model", "{tmp}/notes.txt"],
     "--model {tmp}/notes.txt: is a file; give the pipeline folder (the one holding model_index.json)"),
    (["--output", "{tmp}/out.txt"], "--output {tmp}/out.txt: unknown video extension '.txt'; use one of .mp4, .mkv, "
     ".mov, .avi, .gif"),
    (["--output", "{tmp}/out"], "--output {tmp}/out: no file extension; use one of .mp4, .mkv, .mov, .avi, .gif"),
    (["--output", "{tmp}/folder"], "--output {tmp}/folder: is a folder; give a file name such as {tmp}/folder/out.mp4"),
    (["--output", "{tmp}/new/"], "--output {tmp}/new/: is a folder; give a file name such as {tmp}/new/out.mp4"),
    (["--output", "{tmp}/notes.txt/out.mp4"],
     "--output {tmp}/notes.txt/out.mp4: {tmp}/notes.txt is a file, not a folder"),
    (["--output", "{readonly}/out.mp4"], "--output {readonly}/out.mp4: cannot write in {readonly} (Permission denied)"),
    (["--image", "{tmp}/missing.png"], "--image {tmp}/missing.png: no such file"),
    (["--image", "{tmp}/folder"], "--image {tmp}/folder: is a folder"),
    (["--image", "{tmp}/notes.txt"], "--image {tmp}/notes.txt: not a readable image (UnidentifiedImageError)"),
    ([], "the following arguments are required: prompt (or --prompts FILE)"),  # `neodragon generate` alone
    ([""], "the prompt is empty"),  # `neodragon generate "   "`
]


def _scratch(tmp: Path) -> dict[str, str]:
    (tmp / "notes.txt").write_text("not an image")
    (tmp / "folder").mkdir()
    readonly = tmp / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere a permission bit forbids it; sysfs refuses new files even to root
        readonly = Path("/sys")
    return {"tmp": str(tmp), "readonly": str(readonly)}


def _argv(args: list[str], where: dict[str, str]) -> list[str]:
    args = [a.format(**where) for a in args]
    if args == []:
        return ["generate"]
    if args == [""]:
        return ["generate", "   "]
    return ["generate", PROMPT, *args] + ([] if "--output" in args else ["--output", f"{where['tmp']}/video.mp4"])


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture
def no_loading(monkeypatch):
    """Usage errors must be found before any weight loads: loading fails the test."""
    from diffusers_neodragon import NeodragonPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded for a usage error")

    monkeypatch.setattr(NeodragonPipeline, "from_pretrained", refuse)


@pytest.mark.parametrize(
    "args, message", USAGE_ERRORS, ids=[" ".join(a) if a != [""] else "empty prompt" for a, _ in USAGE_ERRORS])
def test_usage_error_is_one_line_with_exit_code_2(args, message, tmp_path, capsys, no_loading):
    from diffusers_neodragon_cli import main

    if args == ["--device", "cuda"] and _cuda_available():
        pytest.skip("CUDA is available here")
    where = _scratch(tmp_path)
    code = main(_argv(args, where))
    err = capsys.readouterr().err
    assert (code, err) == (2, f"neodragon: error: {message.format(**where)}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "notes.txt", "readonly"]  # nothing written


def test_help_states_the_embedded_models_defaults_and_limits(capsys):
    from diffusers_neodragon_cli import main

    assert main(["generate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "128x128 and 49 frames by default; sizes are multiples of 64, at most 256; frames 8k+1" in text
    assert "128 for the embedded model, at most 256" in text and "--threads" in text


def test_help_and_argument_errors_import_no_torch_and_are_fast():
    """`neodragon --help` and the checks that need no torch, in a fresh interpreter: torch, diffusers, numpy and
    transformers are never imported (the command lives outside diffusers_neodragon, whose __init__ loads them)."""
    script = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "from diffusers_neodragon_cli import main\n"
        "codes = [main(['--help']), main(['generate', '--help']), main(['generate', 'x', '--frames', '10']),\n"
        "         main(['generate', 'x', '--output', 'out.txt'])]\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'numpy', 'transformers') if m in sys.modules)\n"
        "print(codes, heavy, time.perf_counter() - start)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    line = done.stdout.strip().splitlines()[-1]
    seconds = float(line.rsplit(" ", 1)[1])
    assert line.startswith("[0, 0, 2, 2] []"), (line, done.stderr)
    assert seconds < 2.0, seconds  # about 0.1 s; generous so that a busy CI machine does not flake


# ------------------------------------------------------------------------------------- runtime failures (exit 1)
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.tiny_components import pipeline

    folder = tmp_path_factory.mktemp("tiny") / "model"
    pipeline(with_first_frame=False, with_super_resolution=False).save_pretrained(folder)
    return folder


def _tiny_argv(model, output) -> list[str]:
    return ["generate", "a red circle", "--model", str(model), "--mode", "monolithic", "--frames", "9", "--height",
            "64", "--width", "64", "--steps", "1", "--first-frame-steps", "1", "--output", str(output)]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("neodragon:") or "Traceback" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_corrupt_weights_are_one_line_naming_the_file_exit_1(tiny_model, tmp_path, capsys):
    import shutil

    from diffusers_neodragon_cli import main

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / "videos" / "out.mp4"
    assert main(_tiny_argv(broken, out)) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("neodragon: error: ") and "diffusion_pytorch_model.safetensors" in line
    assert not (tmp_path / "videos").exists()


def test_a_folder_that_is_not_a_pipeline_fails_in_one_line_exit_1(tmp_path, capsys):
    from diffusers_neodragon_cli import main

    (tmp_path / "empty").mkdir()
    assert main(["generate", PROMPT, "--model", str(tmp_path / "empty"), "--output", str(tmp_path / "o.mp4")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("neodragon: error: ") and str(tmp_path / "empty") in line


def test_the_export_command_shares_the_one_line_errors(tmp_path, capsys):
    from diffusers_neodragon_cli import main

    (tmp_path / "empty").mkdir()
    code = main(["export", str(tmp_path / "empty"), "--output", str(tmp_path / "onnx")])
    line = _one_error_line(capsys.readouterr().err)
    assert code in (1, 2) and line.startswith("neodragon: error: ")


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_a_failed_write_leaves_nothing_at_the_output_path(failure, tiny_model, tmp_path, monkeypatch, capsys):
    """The writer fails after writing half a file into a folder the command made: both are gone afterwards."""
    import diffusers.utils

    from diffusers_neodragon_cli import main

    def half_write(frames, path, fps):
        Path(path).write_bytes(b"\0" * 100)
        raise failure

    monkeypatch.setattr(diffusers.utils, "export_to_video", half_write)
    out = tmp_path / "new" / "deeper" / "out.mp4"
    code = main(_tiny_argv(tiny_model, out))
    err = capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    if isinstance(failure, KeyboardInterrupt):
        assert (code, err.splitlines()[-1]) == (130, "neodragon: interrupted")
    else:
        assert (code, _one_error_line(err)) == (1, "neodragon: error: OSError: disk full")


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_traceback(how, tmp_path, monkeypatch, capsys):
    from diffusers_neodragon_cli import main

    (tmp_path / "empty").mkdir()
    argv = ["generate", PROMPT, "--model", str(tmp_path / "empty"), "--output", str(tmp_path / "o.mp4")]
    if how == "flag":
        argv.append("--debug")
    else:
        monkeypatch.setenv("NEODRAGON_DEBUG", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith("neodragon: error: ")


def _print_table() -> None:
    """The closing note's table: input, message, exit code, time to fail (in this process, after its imports), the
    usage errors then the runtime failures (a tiny pipeline with truncated weights, a folder that is no pipeline, a
    Hub id offline, a failing video writer, export of the embedded model's full decoder)."""
    import contextlib
    import io
    import shutil
    import tempfile

    import diffusers.utils

    from diffusers_neodragon_cli import main
    from tests.tiny_components import pipeline

    rows = []

    def run(shown: str, argv: list[str], tmp: str) -> None:
        err = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        seconds = time.perf_counter() - start
        lines = [line for line in err.getvalue().splitlines() if line.startswith("neodragon")]
        rows.append((shown, (lines[-1] if lines else err.getvalue().strip()).replace(tmp, "DIR"), code, seconds))

    with tempfile.TemporaryDirectory() as tmp:
        for index, (args, _) in enumerate(USAGE_ERRORS):
            scratch = Path(tmp) / str(index)
            scratch.mkdir()
            where = _scratch(scratch)
            shown = " ".join(a.format(**where) for a in args).replace(where["tmp"], "DIR")
            shown = shown if args != [""] else '"   " (empty prompt)'
            run(shown or "(no prompt)", _argv(args, where), where["tmp"])
        model = Path(tmp) / "tiny"
        pipeline(with_first_frame=False, with_super_resolution=False).save_pretrained(model)
        broken = Path(tmp) / "broken"
        shutil.copytree(model, broken)
        weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        (Path(tmp) / "empty").mkdir()
        out = f"{tmp}/videos/out.mp4"
        tiny = ["--mode", "monolithic", "--frames", "9", "--height", "64", "--width", "64", "--steps", "1",
                "--first-frame-steps", "1", "--output", out]
        run("--model DIR/broken (truncated safetensors)", ["generate", PROMPT, "--model", str(broken), *tiny], tmp)
        run("--model DIR/empty (no model_index.json)", ["generate", PROMPT, "--model", f"{tmp}/empty", *tiny], tmp)
        run("--model someone/nothing (Hub id, offline)", ["generate", PROMPT, "--model", "someone/nothing", *tiny], tmp)
        original = diffusers.utils.export_to_video

        def failing_writer(frames, path, fps):
            Path(path).write_bytes(b"\0" * 100)
            raise OSError("disk full")

        diffusers.utils.export_to_video = failing_writer
        try:
            run("a video writer failing half-way (output left: none)",
                ["generate", PROMPT, "--model", str(model), *tiny], tmp)
        finally:
            diffusers.utils.export_to_video = original
        assert not Path(out).parent.exists()
        embedded = str(Path(__file__).resolve().parents[1] / "diffusers_neodragon" / "pretrained" / "shapes")
        run("export --components decoder (embedded model: no such graph)",
            ["export", embedded, "--output", f"{tmp}/onnx", "--components", "decoder"], tmp)
    print("| input | message | exit | time to fail |\n|---|---|---|---|")
    for shown, message, code, seconds in rows:
        print(f"| `{shown}` | `{message}` | {code} | {seconds * 1000:.0f} ms |")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _print_table()
