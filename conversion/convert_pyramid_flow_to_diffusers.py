"""Convert Pyramid-Flow's SD3 release into a diffusers-neodragon pipeline folder (monolithic mode).

Source: Hub ``rain1011/pyramid-flow-sd3`` (or a local snapshot of it): ``diffusion_transformer_384p/`` or
``diffusion_transformer_768p/`` (24-block MMDiT with a ``context_embedder`` fed by T5-XXL), the full
``causal_video_vae/`` (causal encoder + original decoder) and the SD3 text encoders (CLIP-L, CLIP-G, T5-XXL as
``text_encoder_3`` / ``tokenizer_3``; no context adapter). The result is a ``NeodragonPipeline`` folder with
Pyramid-Flow's own settings: monolithic generation (first frame 20-20-20 steps with CFG 7, later frames 10-10-10
with CFG 5, the pipeline's monolithic defaults), the prompt suffix ", hyper quality, Ultra HD, 8K", its latent
normalisation (image (z - 0.1490)/1.8415, video (z + 0.2343)/3.0986) and its training resolution. Its
``transformer/`` is also the 24-block teacher that the training operations (pruning, text-encoder and step
distillation) start from.

    python conversion/convert_pyramid_flow_to_diffusers.py --checkpoint_path rain1011/pyramid-flow-sd3 \\
        --variant 384p --dtype bfloat16 --output_path pyramid-flow-sd3-384p
"""

import argparse
import datetime
import os
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert_neodragon_to_diffusers import DTYPES, command_line, push, source_revision  # noqa: E402

from diffusers_neodragon import NeodragonPipeline  # noqa: E402
from diffusers_neodragon.loaders import (  # noqa: E402
    OFFICIAL_VAE_FOLDER,
    PYRAMID_FLOW_HUB_ID,
    PYRAMID_FLOW_VARIANTS,
    TEXT_FOLDERS,
    checkpoint_dtype,
    component_table,
    is_pyramid_flow_layout,
    load_pyramid_flow,
    resolve_snapshot,
    write_conversion_model_card,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_path", default=PYRAMID_FLOW_HUB_ID,
                        help="Pyramid-Flow SD3 snapshot folder or Hub repo id (default: %(default)s)")
    parser.add_argument("--revision", default=None, help="Hub revision of --checkpoint_path")
    parser.add_argument("--cache_dir", default=None, help="Hub cache folder")
    parser.add_argument("--variant", choices=sorted(PYRAMID_FLOW_VARIANTS), default="384p",
                        help="which transformer: diffusion_transformer_384p or diffusion_transformer_768p")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="dtype of the saved weights; auto = that of the source transformer")
    parser.add_argument("--output_path", required=True, help="output folder")
    parser.add_argument("--push_to_hub", action="store_true", help="upload the converted folder to the Hub")
    parser.add_argument("--hub_model_id", default=None, help="Hub repo to push to")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--hub_token", default=None, help="Hub token (default: the logged-in one)")
    return parser.parse_args(argv)


def convert(checkpoint_path, output_path, variant="384p", dtype="auto", revision=None, cache_dir=None, command=None,
            hub_model_id=None):
    dit_folder, height, width = PYRAMID_FLOW_VARIANTS[variant]
    root = resolve_snapshot(checkpoint_path, folders=[*TEXT_FOLDERS, OFFICIAL_VAE_FOLDER, dit_folder],
                            revision=revision, cache_dir=cache_dir)
    if not is_pyramid_flow_layout(root):
        raise ValueError(f"{checkpoint_path} is not a Pyramid-Flow SD3 snapshot (see is_pyramid_flow_layout).")
    torch_dtype = checkpoint_dtype(root / dit_folder) if dtype == "auto" else DTYPES[dtype]
    output = Path(output_path)
    print(f"loading {root} ({variant}) in {torch_dtype} ...")
    pipe = NeodragonPipeline(**load_pyramid_flow(root, variant=variant, dtype=torch_dtype))
    print(f"writing {output} ...")
    pipe.save_pretrained(output, safe_serialization=True)
    sources = dict(
        transformer=f"{dit_folder}/",
        vae=f"{OFFICIAL_VAE_FOLDER}/",
        scheduler="(built: Pyramid-Flow's scheduler with shift 1.0 is this one)",
        **{name: f"{name}/" for name in TEXT_FOLDERS},
    )
    is_hub = not Path(os.fspath(checkpoint_path)).expanduser().is_dir()
    write_conversion_model_card(output, dict(
        title=f"Pyramid-Flow SD3 {variant} for diffusers-neodragon",
        description=(
            "Pyramid-Flow (Jin et al., ICLR 2025) is the model Neodragon starts from: the same pyramidal, temporally "
            "causal MMDiT with 24 blocks and a context_embedder fed by T5-XXL, and the full causal VAE decoder. In "
            "this package it generates in monolithic mode and is the teacher of the training operations (block "
            "pruning, text-encoder distillation, decoder distillation, pyramidal DMD)."
        ),
        source_repo=str(checkpoint_path) if is_hub else PYRAMID_FLOW_HUB_ID,
        source=(f"[{checkpoint_path}](https://huggingface.co/{checkpoint_path})" if is_hub
                else f"local snapshot `{checkpoint_path}` in the layout of {PYRAMID_FLOW_HUB_ID}"),
        license_link=f"https://huggingface.co/{PYRAMID_FLOW_HUB_ID}",
        license_name="see-source-model-card",
        weights_license_note=(
            "Pyramid-Flow's SD3 weights were initialised from Stable Diffusion 3 Medium, so their Hub card may carry "
            "Stability AI's licence terms in addition to the authors'; check the card of the revision you converted."
        ),
        code_license="MIT (jy0205/Pyramid-Flow)",
        revision=source_revision(root, revision),
        mode="monolithic",
        dtype=str(torch_dtype).replace("torch.", ""),
        command=command,
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        components=component_table(pipe, sources),
        default_height=height,
        default_width=width,
        default_num_frames=pipe.config.default_num_frames,
        prompt_suffix=pipe.config.prompt_suffix,
        usage_path=hub_model_id or str(output),
        notes=(
            "Pyramid-Flow's image-to-video used video CFG 4 and its 768p model CFG 7-9 for the first frame: pass "
            "`video_guidance_scale` / `guidance_scale` to change the defaults. 121 frames = 16 latent frames (5 s at "
            "24 fps) as in Pyramid-Flow's default `temp=16`."
        ),
    ))
    return output


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        raise SystemExit("--push_to_hub needs --hub_model_id")
    command = "python conversion/convert_pyramid_flow_to_diffusers.py " + command_line(argv)
    output = convert(args.checkpoint_path, args.output_path, args.variant, args.dtype, args.revision, args.cache_dir,
                     command=command, hub_model_id=args.hub_model_id if args.push_to_hub else None)
    if args.push_to_hub:
        push(output, args.hub_model_id, args.private, args.hub_token, message="Convert Pyramid-Flow SD3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
