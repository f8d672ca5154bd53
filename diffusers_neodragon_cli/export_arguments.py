"""The arguments of ``neodragon export`` (argparse only: the exporter's dependencies load when it runs).

``export_main(argv)`` takes the arguments after ``export``.
"""

import argparse

from .cli import int_at_least


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("pipeline", help="NeodragonPipeline folder (save_pretrained output)")
    parser.add_argument("--output", required=True, help="folder for the ONNX graphs, manifest.json and reports")
    parser.add_argument("--precision", choices=["fp16", "w8a16"], default="fp16",
                        help="NPU precision: fp16 (fp32 graphs compiled in fp16) or w8a16 (adds QDQ graphs "
                             "calibrated with the ONNX pipeline)")
    parser.add_argument("--check-htp", action="store_true",
                        help="compile and run every graph on the QNN HTP simulator with CPU fallback disabled")
    parser.add_argument("--aihub-device", metavar="NAME",
                        help="submit Qualcomm AI Hub compile/link/profile/inference jobs, e.g. "
                             '"Snapdragon 8 Elite QRD" (needs an API token: qai-hub configure --api_token ...)')
    parser.add_argument("--aihub-dry-run", action="store_true",
                        help="with --aihub-device: run the AI Hub job graph through qai-hub's own client with the "
                             "network replaced (every check qai-hub makes before an upload; no token, nothing sent)")
    parser.add_argument("--height", type=int_at_least(1), help="video height (default: the pipeline's)")
    parser.add_argument("--width", type=int_at_least(1), help="video width (default: the pipeline's)")
    parser.add_argument("--frames", type=int_at_least(1), help="number of frames, 8k+1 (default: the pipeline's)")
    parser.add_argument("--components", nargs="+", help="export only these graphs (names or kinds)")
    parser.add_argument("--backend", choices=["auto", "torch"], default="auto",
                        help="exporter: torch.onnx, the only one (optimum's was dropped: see the README)")
    parser.add_argument("--opset", type=int, default=17)
    return parser


def build_export_parser() -> argparse.ArgumentParser:
    return add_export_arguments(argparse.ArgumentParser(
        prog="neodragon export", description="Export a Neodragon pipeline for Snapdragon NPUs (ONNX, QNN HTP, AI Hub)"))


def export_main(argv: list[str] | None = None) -> int:
    args = build_export_parser().parse_args(argv)
    from diffusers_neodragon.export.cli import run_export

    return run_export(args)
