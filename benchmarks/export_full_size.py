"""Export full-size Neodragon components (random weights) and check them on the QNN HTP simulator.

    python benchmarks/export_full_size.py --output /tmp/neodragon_full [--components transformer_stage_2 decoder_step]
        [--run]   # also execute on the HTP simulator (very slow at full size on x86: hours for the DiT)
    python benchmarks/export_full_size.py --output /tmp/neodragon_full --components --shared-context
        # the three exported stages into one context binary, their weights stored once

Architecture: the released shapes: 18-block width-1536 MMDiT (24 heads x 64, pooled 2048) at the 320x512 stage
shapes with a 7-latent-frame (49-frame) history, DT5 (T5-v1.1-base encoder + 768→4096 head) + the 4096-wide
ContextAdapter, the TAEHV-style decoder (256/128/64/64) streaming one latent frame, QuickSRNet-small at 320x512,
the causal VAE encoder (128/256/512/512) on the first frame, and the first-frame parts (an SSD-1B-like SDXL at twice
the video size: t2i_text_encoder, t2i_text_encoder_2, t2i_unet, t2i_vae_decoder). Memory is the limit on a 24 GB
machine: components are built, exported and checked one at a time. Prints one table with export time, ONNX size,
HTP placement, context-binary size, compile time and the memory estimate against the paper's 3.5 GB budget.
"""

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def build(name):
    from benchmarks import full_size

    torch.manual_seed(0)
    if name.startswith("transformer"):
        return full_size.transformer().eval()
    if name == "text_encoder":
        return full_size.text_encoder_3().eval(), full_size.context_adapter().eval()
    if name in ("decoder_step", "vae_encoder"):
        return full_size.vae().eval()
    if name == "super_resolution":
        model = full_size.super_resolution().eval()
        torch.nn.init.normal_(model.conv_out.weight, std=0.05)  # not the zero init: a non-trivial function to check
        return model
    if name.startswith("t2i_"):
        return first_frame_pipeline(keep=name)
    raise ValueError(name)


def first_frame_pipeline(keep: str):
    """The full-size first-frame pipeline (SSD-1B-like SDXL, see ``benchmarks/full_size.py``), with the text encoders
    other than ``keep`` reduced to their configs: the specs read only those, and the 0.8 B CLIP weights would not
    leave room on a 24 GB machine to export the 1.3 B UNet beside them."""
    from types import SimpleNamespace

    from benchmarks import full_size
    from diffusers_neodragon.data.vocab_tokenizer import build_word_level_tokenizer

    def clip_tokenizer():
        return build_word_level_tokenizer(["a", "cat"], full_size.CLIP_MAX_LENGTH, bos_token="<|startoftext|>",
                                          eos_token="<|endoftext|>")

    pipe = full_size.first_frame_pipeline(clip_tokenizer)
    for attribute in ("text_encoder", "text_encoder_2"):
        if keep != f"t2i_{attribute}":
            # object's setattr: diffusers would register the stand-in as a component
            object.__setattr__(pipe, attribute, SimpleNamespace(config=getattr(pipe, attribute).config))
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        if isinstance(module, torch.nn.Module):
            module.eval()
    gc.collect()
    return pipe


def spec_for(name, model, size):
    from diffusers_neodragon.export import specs

    if name.startswith("transformer_stage_"):
        stage = int(name.rsplit("_", 1)[1])
        return specs.transformer_stage_specs(model, 3, size)[stage]
    if name == "text_encoder":
        return specs.text_encoder_spec(model[0], model[1], size)
    if name == "decoder_step":
        return specs.decoder_step_spec(model, size)
    if name == "vae_encoder":
        return specs.vae_encoder_spec(model, size)
    if name == "super_resolution":
        return specs.super_resolution_spec(model, size)
    if name.startswith("t2i_"):
        return specs.first_frame_specs(model, size, [name])[0]
    raise ValueError(name)


def peak_rss_gib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def budget_summary(rows, budget_bytes):
    """Memory of the exported components against the budget, per precision: all weights resident, and phase by
    phase as a generation runs (``htp_check.generation_memory``; the transformer stages share their weights)."""
    from diffusers_neodragon.export.htp_check import format_memory

    lines = []
    for precision in ("fp16", "w8a16"):
        have = {r["component"]: r[f"memory_{precision}"] for r in rows if f"memory_{precision}" in r}
        if have:
            lines += [f"{precision}: {len(have)} components ({', '.join(have)})", format_memory(have, budget_bytes)]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="/tmp/neodragon_full_size")
    parser.add_argument("--components", nargs="*",
                        default=["text_encoder", "transformer_stage_2", "decoder_step", "super_resolution"])
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--run", action="store_true", help="also run each graph on the HTP simulator")
    parser.add_argument("--no-validate", action="store_true", help="skip the ORT-CPU vs torch check")
    parser.add_argument("--no-htp", action="store_true")
    parser.add_argument("--shared-context", action="store_true",
                        help="finally compile the exported transformer_stage_{0,1,2} into one context binary")
    args = parser.parse_args(argv)
    stages = [Path(args.output) / f"transformer_stage_{index}.onnx" for index in range(3)]
    missing = [p.name for p in stages if not p.exists() and p.stem not in args.components]
    if args.shared_context and missing:
        parser.error(f"--shared-context needs the three stages in --output; export {' '.join(missing)} first "
                     "(--components)")

    import numpy as np
    import onnxruntime as ort

    from diffusers_neodragon.export.exporter import export_component
    from diffusers_neodragon.export.graph_passes import fold_static_shapes
    from diffusers_neodragon.export.htp_check import (
        PAPER_BUDGET_BYTES,
        check_graph,
        compile_shared_context,
        env_info,
        format_report,
        graph_memory,
    )
    from diffusers_neodragon.export.quantize import KEEP_FP16_KINDS
    from diffusers_neodragon.export.specs import ExportSize

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    size = ExportSize(args.height, args.width, args.frames)
    report_path = out / "full_size_report.json"
    rows = json.loads(report_path.read_text())["rows"] if report_path.exists() else []
    rows = [r for r in rows if r["component"] not in args.components]
    reports = []
    for name in args.components:
        t0 = time.perf_counter()
        model = build(name)
        spec = spec_for(name, model, size)
        kind = spec.kind
        params = sum(p.numel() for p in spec.module.parameters())
        print(f"[{name}] {params / 1e6:.1f} M parameters; torch reference ...", flush=True)
        # The torch outputs first, then the model is freed before ONNX Runtime loads the graph (the 1.5 B DiT is
        # 6 GB in fp32: torch model, exporter and ORT sessions must not coexist on a 24 GB machine).
        feeds = {k: v.numpy() for k, v in spec.inputs.items()}
        with torch.no_grad():
            reference = spec.module(**spec.inputs)
        reference = [r.numpy() for r in (reference if isinstance(reference, (tuple, list)) else (reference,))]
        print(f"[{name}] exporting ...", flush=True)
        entry = export_component(spec, out, backend="torch", validate=False, fold_shapes=False)
        export_s = time.perf_counter() - t0
        del spec, model
        gc.collect()
        fold_static_shapes(out / entry["file"])
        onnx_bytes = sum(p.stat().st_size for p in out.glob(f"{name}.onnx*"))
        row = {"component": name, "parameters_m": round(params / 1e6, 1), "export_s": round(export_s, 1),
               "onnx_gib": round(onnx_bytes / 2**30, 3),
               "inputs": {k: v["shape"] for k, v in entry["inputs"].items()}}
        if not args.no_validate:
            session = ort.InferenceSession(str(out / entry["file"]), providers=["CPUExecutionProvider"])
            t1 = time.perf_counter()
            got = session.run(None, feeds)
            row["ort_cpu_run_s"] = round(time.perf_counter() - t1, 2)
            row["ort_vs_torch"] = max(float(np.abs(g - r).max()) for g, r in zip(got, reference))
            del session, got
            gc.collect()
        row["memory_fp16"] = graph_memory(out / entry["file"], "fp16")
        # weights as a w8a16 deployment holds them: quantised, except the text encoders, which stay fp16
        row["memory_w8a16"] = row["memory_fp16"] if kind in KEEP_FP16_KINDS else graph_memory(out / entry["file"],
                                                                                                  "w8a16")
        row["peak_rss_gib"] = round(peak_rss_gib(), 1)
        print(json.dumps(row), flush=True)
        if not args.no_htp:
            report = check_graph(out / entry["file"], feeds, reference, "fp16", name, out / "htp", run=args.run)
            reports.append(report)
            row["htp"] = report.to_dict()
            row["peak_rss_gib"] = round(peak_rss_gib(), 1)
            print(format_report([report]), flush=True)
        rows.append(row)
        report_path.write_text(json.dumps({"env": env_info(), "size": vars(size), "rows": rows}, indent=2))
        del feeds, reference
        gc.collect()
    if args.shared_context:
        print("[transformer_stages] one context binary for the three stages ...", flush=True)
        report = compile_shared_context(stages, out / "htp_shared")
        reports.append(report)
        rows = [r for r in rows if r["component"] != report.component] + [{"component": report.component,
                                                                           "htp": report.to_dict()}]
        report_path.write_text(json.dumps({"env": env_info(), "size": vars(size), "rows": rows}, indent=2))
    if reports:
        print(format_report(reports))
    print(json.dumps(rows, indent=1))
    print(f"rows of all runs so far: {report_path}")
    print(budget_summary(rows, PAPER_BUDGET_BYTES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
