"""``neodragon export PIPELINE_FOLDER --output DIR ...``: ONNX export, optional w8a16, HTP check and AI Hub jobs.

``run_export(args)`` runs it on the arguments that ``diffusers_neodragon_cli.export_arguments`` defines and parses
(before torch loads).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _fail(message: str, code: int = 2) -> int:
    print(f"neodragon: error: {message}", file=sys.stderr)
    return code


def run_export(args) -> int:
    """Check the arguments, the model's sizes and that every requested graph is exportable, then export into a
    temporary folder that becomes ``--output`` only when every step (export, w8a16, HTP check) succeeded."""

    def say(message: str) -> None:
        print(message, flush=True)

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        return _fail(f"--output {output} exists and is not a folder")
    if args.check_htp:
        from .htp_check import qnn_available

        if not qnn_available():
            return _fail("--check-htp needs onnxruntime-qnn (pip install onnxruntime-qnn)")
    # AI Hub: fail before any work when no token is configured.
    if args.aihub_device:
        from .aihub import AIHubConfigurationError, require_token

        try:
            require_token()
        except AIHubConfigurationError as error:
            return _fail(str(error))

    import torch

    from .. import NeodragonPipeline
    from .exporter import export_pipeline, staged_output, write_manifest
    from .specs import ExportSize, select_components

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
        select_components(pipe, args.components)
    except ValueError as error:
        return _fail(str(error))
    say(f"exporting for {size.height}x{size.width}, {size.num_frames} frames to {output}")
    with staged_output(output) as work:
        manifest = export_pipeline(pipe, work, size, components=args.components, backend=args.backend,
                                   opset=args.opset, progress=say)
        del pipe
        manifest["precision"] = args.precision
        write_manifest(work, manifest)

        calibration = None
        if args.precision == "w8a16":
            from .quantize import collect_calibration_data, quantize_export

            say("w8a16: collecting calibration data with the ONNX pipeline ...")
            calibration = collect_calibration_data(work)
            quantize_export(work, calibration=calibration, progress=say)

        if args.check_htp:
            from .htp_check import check_export, env_info, format_report

            feeds = {name: samples[0] for name, samples in (calibration or {}).items() if samples}
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

        plan = submit_jobs(output, args.aihub_device, args.precision, progress=say)
        say(f"submitted {len(plan)} AI Hub jobs")
    say(f"done in {time.perf_counter() - start:.1f} s")
    return 0

