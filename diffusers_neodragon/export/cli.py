"""``neodragon export PIPELINE_FOLDER --output DIR ...``: ONNX export, optional w8a16, HTP check and AI Hub jobs.

``run_export(args)`` runs it on the arguments that ``diffusers_neodragon_cli.export_arguments`` defines and parses
(before torch loads).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path


def _fail(message: str, code: int = 2) -> int:
    print(f"neodragon: error: {message}", file=sys.stderr)
    return code


def run_export(args) -> int:
    """Check the arguments, the model's sizes and that every requested graph is exportable, then export into a
    temporary folder that becomes ``--output`` only when every step (export, w8a16, HTP check) succeeded.

    Without ``--components``, every exportable graph is exported and those that cannot be (e.g. a VAE decoder
    that no step wrapper knows) are skipped with a warning on stderr and listed under ``"skipped"`` in manifest.json;
    a named graph that cannot be exported is an error before any work."""

    def say(message: str) -> None:
        print(message, flush=True)

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        return _fail(f"--output {output} exists and is not a folder")
    if args.check_htp:
        from .htp_check import qnn_available

        if not qnn_available():
            return _fail("--check-htp needs onnxruntime-qnn (pip install onnxruntime-qnn)")
    # AI Hub: fail before any work when no token is configured (a dry run needs none, only qai-hub).
    dry_run = getattr(args, "aihub_dry_run", False)
    if dry_run and not args.aihub_device:
        return _fail("--aihub-dry-run checks the jobs of --aihub-device: name a device too")
    if args.aihub_device and dry_run:
        import importlib.util

        if importlib.util.find_spec("qai_hub") is None:
            return _fail("--aihub-dry-run needs qai-hub (pip install qai-hub)")
    elif args.aihub_device:
        from .aihub import AIHubConfigurationError, require_token

        try:
            require_token()
        except AIHubConfigurationError as error:
            return _fail(str(error))

    import torch

    from .. import NeodragonPipeline
    from .exporter import SkippedComponentWarning, export_pipeline, staged_output, write_manifest
    from .specs import ExportSize, select_components, skipped_components

    start = time.perf_counter()
    say(f"loading {args.pipeline} ...")
    pipe = NeodragonPipeline.from_pretrained(args.pipeline, dtype=torch.float32)
    size = ExportSize(
        args.height or pipe.config.default_height, args.width or pipe.config.default_width,
        args.frames or pipe.config.default_num_frames,
    )
    multiple = pipe.size_multiple
    if size.height % multiple or size.width % multiple or (size.num_frames - 1) % pipe.vae_temporal_scale:
        return _fail(f"height/width must be multiples of {multiple} and frames {pipe.vae_temporal_scale}k+1; got "
                     f"{size.height}x{size.width}, {size.num_frames} frames")
    try:
        selected = [name for name, _ in select_components(pipe, args.components)]
    except ValueError as error:
        return _fail(str(error))
    # Calibration and the held-out check run the exported pipeline: every graph but the decoder's (the torch VAE
    # can stand in) is needed.
    needed = [name for name, kind in select_components(pipe) if kind != "decoder_step" and name not in selected]
    if args.precision == "w8a16" and needed:
        return _fail(f"--precision w8a16 calibrates by running the exported pipeline, which also needs "
                     f"{' '.join(needed)}: leave out --components (or add those), or export --precision fp16")
    skipped = skipped_components(pipe, args.components)
    for name, reason in skipped.items():
        print(f"neodragon: warning: skipping {name}: {reason}", file=sys.stderr, flush=True)
    # Without a decoder_step graph (left out with --components), w8a16 calibration decodes the
    # monolithic videos with the torch VAE (their frames calibrate the VAE encoder): keep it past the export.
    needs_frames = args.precision == "w8a16" or args.check_htp
    torch_vae = pipe.vae if needs_frames and "decoder_step" not in selected else None
    say(f"exporting for {size.height}x{size.width}, {size.num_frames} frames to {output}")
    with staged_output(output) as work:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkippedComponentWarning)  # already said on stderr
            manifest = export_pipeline(pipe, work, size, components=args.components, backend=args.backend,
                                       opset=args.opset, progress=say)
        del pipe
        manifest["precision"] = args.precision
        write_manifest(work, manifest)

        from .ort_pipeline import torch_vae_decoder
        from .quantize import collect_calibration_data, collect_heldout_states

        decoder = torch_vae_decoder(torch_vae) if torch_vae is not None else None
        del torch_vae
        if args.precision == "w8a16":
            from .quantize import quantize_export

            say("w8a16: collecting calibration data with the ONNX pipeline (its own sampling defaults) ...")
            calibration = collect_calibration_data(work, decoder=decoder)
            quantize_export(work, calibration=calibration, progress=say)

        if args.check_htp:
            from .htp_check import check_export, env_info, format_report

            # Checked on states of prompts and seeds that calibration never saw: the figure a user meets.
            feeds = None
            if needed:
                say(f"checking on random inputs: a generation to draw real states from also needs {' '.join(needed)}")
            else:
                say("collecting held-out states to check on (prompts and seeds not calibrated on) ...")
                feeds = collect_heldout_states(work, decoder=decoder)
            reports = check_export(work, args.precision, feeds_by_component=feeds, progress=say)
            say(format_report(reports))
            report_name = f"htp_report_{args.precision}.json"
            (work / report_name).write_text(
                json.dumps({"env": env_info(), "reports": [r.to_dict() for r in reports]}, indent=2))
            say(f"wrote {output / report_name}")
            if not all(r.on_htp for r in reports):
                say("some graphs did not place fully on the HTP (see above)")

    if args.aihub_device:
        from .aihub import submit_jobs

        plan = submit_jobs(output, args.aihub_device, args.precision, progress=say, dry_run=dry_run)
        if dry_run:
            say(f"AI Hub dry run: {len(plan)} jobs passed qai-hub's own checks; nothing was sent")
        else:
            say(f"submitted {len(plan)} AI Hub jobs")
    if skipped:
        say(f"WARNING: not exported (see \"skipped\" in {output / 'manifest.json'}): {', '.join(skipped)}")
    say(f"done in {time.perf_counter() - start:.1f} s")
    return 0

