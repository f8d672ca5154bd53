"""The ablation table of a compression chain: for each step its costs and its ShapesBench scores in one row, joined by
label from the JSON files of the two measuring scripts, so that every cell is a measurement and none is copied by hand.

    python benchmarks/shapesbench_compare.py "teacher=T" "pruned=P" ... --json sb.json
    python benchmarks/pipeline_latency.py "teacher=T" "pruned=P" ... --device cpu --threads 2 --json cpu.json
    python benchmarks/pipeline_latency.py "teacher=T" "pruned=P" ... --cuda-graphs --json gpu.json   # optional
    python benchmarks/ablation_table.py --shapesbench sb.json --cpu cpu.json [--gpu gpu.json] [--output ablation.md]

Rows follow the ShapesBench file's order (its first row is the reference of every Δ); a label measured for its costs
alone comes after them. A cell nobody measured is "–".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.shapesbench_compare import SPLITS, markdown_table, total_cells  # noqa: E402


MISSING = "–"


def _load(path: str | None, what: str):
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"--{what}: cannot read {path}: {error}") from None


def _by_label(rows: list[dict] | None, what: str) -> dict[str, dict]:
    """pipeline_latency.py rows by label; a label twice is refused (which row would the table mean?)."""
    out: dict[str, dict] = {}
    for row in rows or []:
        if row["label"] in out:
            raise SystemExit(f"--{what}: the label {row['label']!r} is measured twice")
        out[row["label"]] = row
    return out


def build_rows(shapesbench: dict, cpu: list[dict], gpu: list[dict] | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the table; see the module docstring."""
    table = shapesbench["table"]
    cpu_rows, gpu_rows = _by_label(cpu, "cpu"), _by_label(gpu, "gpu")
    labels = list(table) + [label for label in {**cpu_rows, **gpu_rows} if label not in table]
    first = next(iter(table.values()), None)
    header = ["step", "DiT params", "total params", "NFE", "CPU latency (s)", "GPU latency (s)", "GPU peak (MiB)"]
    for split in SPLITS:
        header += [f"{split} total", "Δ", "semantic / quality / temporal"]
    rows = []
    for label in labels:
        costs = cpu_rows.get(label) or gpu_rows.get(label)
        nfe = MISSING
        if costs is not None:
            nfe = f"{costs['first_frame_nfe']} + {costs['nfe']}" if costs["first_frame_nfe"] else str(costs["nfe"])
        cells = [
            label,
            MISSING if costs is None else f"{costs['parameters']['transformer'] / 1e6:.2f}M",
            MISSING if costs is None else f"{costs['parameters']['total'] / 1e6:.2f}M",
            nfe,
            f"{cpu_rows[label]['seconds_median']:.2f}" if label in cpu_rows else MISSING,
            f"{gpu_rows[label]['seconds_median']:.3f}" if label in gpu_rows else MISSING,
            f"{gpu_rows[label]['peak_memory_bytes'] / 2**20:.0f}" if label in gpu_rows else MISSING,
        ]
        for split in SPLITS:
            if label not in table:
                cells += [MISSING] * 3
                continue
            scores = table[label][split]
            cells += total_cells(scores, first[split])
            cells.append(" / ".join(f"{np.mean(scores[f]):.1f}" for f in ("semantic", "quality", "temporal")))
        rows.append(cells)
    return header, rows


def format_markdown(shapesbench: dict, cpu: list[dict], gpu: list[dict] | None = None) -> str:
    header, rows = build_rows(shapesbench, cpu, gpu)
    threads = {row["threads"] for row in cpu}
    seeds = ",".join(map(str, shapesbench["seeds"]))
    note = (f"ShapesBench: {shapesbench['num_prompts']} prompts per split, means over seeds {seeds} (each seed's total "
            f"in brackets), Δ against the first row. Latency: one video at each folder's defaults, median; CPU with "
            f"{'/'.join(map(str, sorted(threads))) or '?'} threads"
            + (", GPU with the settings of its run." if gpu else "; no GPU run."))
    return note + "\n\n" + markdown_table(header, rows) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapesbench", required=True, help="shapesbench_compare.py --json output")
    parser.add_argument("--cpu", required=True, help="pipeline_latency.py --json output, on the CPU")
    parser.add_argument("--gpu", default=None, help="pipeline_latency.py --json output, on a GPU")
    parser.add_argument("--output", default=None, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    shapesbench = _load(args.shapesbench, "shapesbench")
    cpu, gpu = _load(args.cpu, "cpu"), _load(args.gpu, "gpu")
    if any(row["device"] != "cpu" for row in cpu):
        raise SystemExit("--cpu: these latencies were not measured on the CPU (device "
                         f"{sorted({row['device'] for row in cpu})})")
    if gpu is not None and any(not row["device"].startswith("cuda") for row in gpu):
        raise SystemExit("--gpu: these latencies were not measured on a GPU")
    text = format_markdown(shapesbench, cpu, gpu)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return text


if __name__ == "__main__":
    main()
