"""Compare pipelines on ShapesBench over the same prompts and several seeds: a teacher against its compressed
students, one row per pipeline, both splits, means over the seeds and the difference to the first row.

    python benchmarks/shapesbench_compare.py "teacher=diffusers_neodragon/pretrained/shapes" \\
        "student=runs/dmd/1-1-1 --mode hybrid" [--seeds 0,1] [--num-prompts 32] [--jobs 4] \\
        [--results-dir runs/shapesbench] [--markdown] [--json compare.json]

Each entry is ``LABEL=FOLDER`` followed by any options of ``benchmarks/shapesbench.py`` for that pipeline (mode,
steps, history noise, ...). Every (entry, seed) pair is one ``shapesbench.py`` process, ``--jobs`` of them at once
(on one GPU the small Shapes models leave room for several). With ``--results-dir`` each pair's JSON is kept there,
and a later call with the same entry (folder and options) reuses it, so a table can grow one entry at a time; a kept
file made with other settings is refused (a retrained folder needs a new label or results folder). One seed moves a
32-prompt total by several points: judge a student by the mean over seeds and both splits, never by one figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


BENCHMARK = Path(__file__).with_name("shapesbench.py")
SPLITS = ("seen", "held-out")
FIELDS = ("score", "semantic", "quality", "temporal")


def parse_entry(text: str) -> tuple[str, str, list[str]]:
    """``"label=folder --mode hybrid"`` -> ("label", "folder", ["--mode", "hybrid"])."""
    tokens = shlex.split(text)
    if not tokens or "=" not in tokens[0]:
        raise argparse.ArgumentTypeError(f"an entry is LABEL=FOLDER [shapesbench options], got {text!r}")
    label, folder = tokens[0].split("=", 1)
    if not re.fullmatch(r"[\w.+-]+", label) or not folder:
        raise argparse.ArgumentTypeError(f"a label is letters, digits and ._+- and needs a folder, got {tokens[0]!r}")
    return label, folder, tokens[1:]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("entries", nargs="+", type=parse_entry, help='"LABEL=FOLDER [shapesbench options]"')
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    parser.add_argument("--num-prompts", type=int, default=32, help="prompts per split (default 32)")
    parser.add_argument("--jobs", type=int, default=1, help="shapesbench processes at once")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: cores/jobs)")
    parser.add_argument("--results-dir", help="keep (and reuse) each run's JSON here")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--json", help="write the table's numbers here")
    return parser


def _settings(arguments: list[str]) -> dict:
    """The ``settings`` a ``shapesbench.py`` run with these arguments records in its JSON."""
    spec = importlib.util.spec_from_file_location("shapesbench_script", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    settings = {k: v for k, v in vars(module._parse_args(arguments)).items() if k != "json"}
    return json.loads(json.dumps(settings))


def _run_one(label: str, folder: str, options: list[str], seed: int, num_prompts: int, out: Path,
             threads: int) -> dict:
    arguments = [folder, "--seed", str(seed), "--num-prompts", str(num_prompts), *options]
    if not out.is_file():
        command = [sys.executable, str(BENCHMARK), *arguments, "--json", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"shapesbench failed for {label} (seed {seed}): {shlex.join(command)}\n"
                               f"{done.stderr[-3000:]}")
    report = json.loads(out.read_text())
    expected = _settings(arguments)
    if report["settings"] != expected:
        differ = sorted(k for k in expected.keys() | report["settings"].keys()
                        if expected.get(k) != report["settings"].get(k))
        raise ValueError(f"{out} was made with other settings ({', '.join(differ)}) than {label}'s entry: remove it "
                         "or use another label or --results-dir")
    return report


def compare(entries, seeds: list[int], num_prompts: int, jobs: int, results_dir: str | None,
            threads: int | None = None) -> dict:
    """``{label: {"seen": {field: [per seed]}, "held-out": ..., "seconds_per_video": float}}``."""
    labels = [label for label, _, _ in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must differ, got {labels}")
    threads = threads or max(1, (os.cpu_count() or 1) // max(jobs, 1))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(results_dir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        tasks = [(label, path, options, seed, num_prompts, folder / f"{label}_seed{seed}_n{num_prompts}.json", threads)
                 for label, path, options in entries for seed in seeds]
        with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
            reports = list(pool.map(lambda task: _run_one(*task), tasks))
    table: dict = {}
    for (label, *_), report in zip(tasks, reports):
        row = table.setdefault(label, {split: {f: [] for f in FIELDS} for split in SPLITS} | {"seconds": []})
        for split in SPLITS:
            for field in FIELDS:
                row[split][field].append(report["summary"][split][field])
        row["seconds"].append(report["seconds_per_video"])
    for row in table.values():
        row["seconds_per_video"] = float(np.mean(row.pop("seconds")))
    return table


def total_cells(scores: dict, first: dict) -> list[str]:
    """One split's total of one row, as the mean over seeds with each seed's in brackets, and its difference to the
    first row's mean."""
    totals = scores["score"]
    per_seed = "/".join(f"{v:.1f}" for v in totals)
    return [f"{np.mean(totals):.1f} ({per_seed})", f"{np.mean(totals) - np.mean(first['score']):+.1f}"]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def format_comparison(table: dict, seeds: list[int], markdown: bool = False) -> str:
    """One row per pipeline: total (mean over seeds, and each seed's), semantic, quality, temporal per split, and the
    total's difference to the first row."""
    first = next(iter(table.values()))
    header = ["pipeline"]
    for split in SPLITS:
        header += [f"{split} total", "Δ", "semantic", "quality", "temporal"]
    header.append("s/video")
    rows = []
    for label, row in table.items():
        cells = [label]
        for split in SPLITS:
            cells += total_cells(row[split], first[split])
            cells += [f"{np.mean(row[split][f]):.1f}" for f in ("semantic", "quality", "temporal")]
        cells.append(f"{row['seconds_per_video']:.2f}")
        rows.append(cells)
    note = f"ShapesBench, means over seeds {','.join(map(str, seeds))} (per seed in brackets); Δ: against the first row"
    if markdown:
        return note + "\n\n" + markdown_table(header, rows)
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cells, widths)) for cells in rows]
    return note + "\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    table = compare(args.entries, seeds, args.num_prompts, args.jobs, args.results_dir, args.threads)
    print(format_comparison(table, seeds, markdown=args.markdown))
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": seeds, "num_prompts": args.num_prompts, "table": table},
                                              indent=1))
    return table


if __name__ == "__main__":
    main()
