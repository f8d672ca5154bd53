"""Convert the official Neodragon release into diffusers-neodragon pipeline folders, one per mode.

The official release (Hub ``Qualcomm-AI-Research/Neodragon``) is a folder per component without ``model_index.json``;
this writes ``NeodragonPipeline.save_pretrained`` folders that ``NeodragonPipeline.from_pretrained`` and
``diffusers.DiffusionPipeline.from_pretrained`` (after ``import diffusers_neodragon``) load, plus a model card.

    python conversion/convert_neodragon_to_diffusers.py --checkpoint_path Qualcomm-AI-Research/Neodragon \\
        --mode hybrid --dtype bfloat16 --output_path neodragon-hybrid

``--checkpoint_path`` is a local snapshot folder or a Hub id (only the folders the chosen mode needs are
downloaded). ``--mode all`` writes ``OUTPUT/hybrid`` and ``OUTPUT/monolithic``. ``--dtype auto`` keeps the dtype of
the source transformer. Weights are read with safetensors only; any missing, unexpected or mis-shaped tensor stops
the conversion with a list of them.
"""

import argparse
import datetime
import os
import re
import shlex
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from diffusers_neodragon import NeodragonPipeline  # noqa: E402
from diffusers_neodragon.loaders import (  # noqa: E402
    NEODRAGON_HUB_ID,
    OFFICIAL_ADAPTER_FOLDERS,
    OFFICIAL_TRANSFORMER_FOLDERS,
    OFFICIAL_VAE_FOLDER,
    SSD1B_FOLDERS,
    checkpoint_dtype,
    component_table,
    is_official_neodragon_layout,
    load_official_neodragon,
    official_neodragon_folders,
    official_neodragon_modes,
    resolve_snapshot,
    write_conversion_model_card,
)
from diffusers_neodragon.pipelines.neodragon.mode_defaults import MODES  # noqa: E402


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_path", default=NEODRAGON_HUB_ID,
                        help="official snapshot folder or Hub repo id (default: %(default)s)")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --checkpoint_path")
    parser.add_argument("--cache_dir", default=None, help="Hub cache folder")
    parser.add_argument("--mode", choices=[*MODES, "all"], default="hybrid",
                        help="hybrid (SSD-1B first frame + 1-1-1 DiT), monolithic (multi-step DiT) or all")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="dtype of the saved weights; auto = that of the source transformer")
    parser.add_argument("--output_path", required=True,
                        help="output folder (with --mode all: one sub-folder per mode)")
    parser.add_argument("--push_to_hub", action="store_true", help="upload each converted folder to the Hub")
    parser.add_argument("--hub_model_id", default=None,
                        help="Hub repo to push to (with --mode all, '-hybrid' / '-monolithic' is appended)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--hub_token", default=None, help="Hub token (default: the logged-in one)")
    return parser.parse_args(argv)


def source_revision(root: Path, requested):
    """The commit of a Hub snapshot (its folder name), else the requested revision, else unknown."""
    if re.fullmatch(r"[0-9a-f]{40}", root.name) and root.parent.name == "snapshots":
        return root.name
    return requested or "unknown (local folder)"


def hub_repo_for(hub_model_id, mode, current):
    """The Hub repo a converted folder goes to: ``hub_model_id``, with ``-<mode>`` appended for ``--mode all``."""
    if hub_model_id is None:
        return None
    return hub_model_id if mode != "all" else f"{hub_model_id}-{current}"


def convert(checkpoint_path, output_path, mode="hybrid", dtype="auto", revision=None, cache_dir=None, command=None,
            hub_model_id=None):
    """Convert one snapshot into one folder per requested mode; returns the written folders. ``hub_model_id`` (when
    the folders will be pushed) is what the model cards' usage examples load."""
    modes = list(MODES) if mode == "all" else [mode]
    folders = sorted({name for m in modes for name in official_neodragon_folders(m)})
    root = resolve_snapshot(checkpoint_path, folders=folders, revision=revision, cache_dir=cache_dir)
    if not is_official_neodragon_layout(root):
        raise ValueError(
            f"{checkpoint_path} is not an official Neodragon snapshot (see is_official_neodragon_layout)."
        )
    missing = [m for m in modes if m not in official_neodragon_modes(root)]
    if missing:
        raise ValueError(f"{checkpoint_path} has no transformer/context adapter for mode(s) {missing}.")
    written = []
    for current in modes:
        if dtype == "auto":
            torch_dtype = checkpoint_dtype(root / OFFICIAL_TRANSFORMER_FOLDERS[current])
        else:
            torch_dtype = DTYPES[dtype]
        output = Path(output_path) / current if mode == "all" else Path(output_path)
        print(f"[{current}] loading {root} in {torch_dtype} ...")
        pipe = NeodragonPipeline(**load_official_neodragon(root, mode=current, dtype=torch_dtype))
        print(f"[{current}] writing {output} ...")
        pipe.save_pretrained(output, safe_serialization=True)
        sources = dict(
            transformer=f"{OFFICIAL_TRANSFORMER_FOLDERS[current]}/",
            context_adapter=f"{OFFICIAL_ADAPTER_FOLDERS[current]}/",
            vae=f"{OFFICIAL_VAE_FOLDER}/",
            scheduler="(built: the release's default scheduler config)",
            first_frame_pipeline=", ".join(f"{f}/" for f in SSD1B_FOLDERS.values()) + " (+ LCMScheduler)",
            **{name: f"{name}/" for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                                             "text_encoder_3", "tokenizer_3")},
        )
        is_hub = not Path(os.fspath(checkpoint_path)).expanduser().is_dir()
        write_conversion_model_card(output, dict(
            title=f"Neodragon ({current}) for diffusers-neodragon",
            description=(
                "Hybrid mode: the SSD-1B first-frame pipeline (LCM, 4 steps) draws frame 0, then the step-distilled "
                "transformer generates every later latent frame in 1-1-1 steps without guidance."
                if current == "hybrid" else
                "Monolithic mode: the multi-step transformer draws the first frame itself (20-20-20 steps, CFG 7) and "
                "every later latent frame in 10-10-10 steps with CFG 5."
            ),
            source_repo=str(checkpoint_path) if is_hub else NEODRAGON_HUB_ID,
            source=(f"[{checkpoint_path}](https://huggingface.co/{checkpoint_path})" if is_hub
                    else f"local snapshot `{checkpoint_path}` in the layout of {NEODRAGON_HUB_ID}"),
            license_link=f"https://huggingface.co/{NEODRAGON_HUB_ID}",
            license_name="see-source-model-card",
            weights_license_note=(
                "The licence of the Neodragon weights is the one stated on their Hub model card (reported as "
                "bsd-3-clause-clear when this converter was written, while an earlier mirror of the card declared a "
                "Qualcomm proprietary licence; the conversion does not check either)."
            ),
            code_license="BSD-3-Clause-Clear (Qualcomm-AI-research/neodragon)",
            revision=source_revision(root, revision),
            mode=current,
            dtype=str(torch_dtype).replace("torch.", ""),
            command=command,
            date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            components=component_table(pipe, sources),
            default_height=pipe.config.default_height,
            default_width=pipe.config.default_width,
            default_num_frames=pipe.config.default_num_frames,
            prompt_suffix=pipe.config.prompt_suffix,
            usage_path=hub_repo_for(hub_model_id, mode, current) or str(output),
            notes=(
                "The official release has no super-resolution weights: `super_resolution` is empty here (the "
                "paper's 640x1024 output needs a QuickSRNet trained separately). Frame 0 of a hybrid video is the "
                "VAE reconstruction of the first-frame image, as in the official code."
            ),
        ))
        written.append(output)
        del pipe
    return written


def command_line(argv) -> str:
    """The arguments as typed, for the model card, without the value of --hub_token."""
    words, hide = list(sys.argv[1:] if argv is None else argv), False
    shown = []
    for word in words:
        if hide:
            shown.append("***")
            hide = False
            continue
        hide = word == "--hub_token"
        shown.append("--hub_token=***" if word.startswith("--hub_token=") else shlex.quote(word))
    return " ".join(shown)


def push(folder: Path, repo_id: str, private: bool, token, message="Convert the official Neodragon release"):
    import huggingface_hub

    repo_id = huggingface_hub.create_repo(repo_id, exist_ok=True, private=private, token=token).repo_id
    huggingface_hub.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token,
                                  commit_message=f"{message} to diffusers-neodragon")
    print(f"pushed {folder} to https://huggingface.co/{repo_id}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        raise SystemExit("--push_to_hub needs --hub_model_id")
    command = "python conversion/convert_neodragon_to_diffusers.py " + command_line(argv)
    written = convert(args.checkpoint_path, args.output_path, args.mode, args.dtype, args.revision, args.cache_dir,
                      command=command, hub_model_id=args.hub_model_id if args.push_to_hub else None)
    if args.push_to_hub:
        for folder in written:
            push(folder, hub_repo_for(args.hub_model_id, args.mode, folder.name), args.private, args.hub_token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
