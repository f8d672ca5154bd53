"""benchmarks/ablation_table.py: the rows of shapesbench_compare.py and pipeline_latency.py joined by label, each
cell computed from the files (means, Δ to the first row, NFE with a nested first frame), unmeasured cells marked."""

import json

import pytest

from tests.script_loading import load_script


ablation = load_script("benchmarks/ablation_table.py")


def scores(seen, held_out):
    """A shapesbench_compare.py row: per-seed totals, the other fields a fixed offset from them."""
    return {split: {"score": totals, "semantic": [t + 1 for t in totals], "quality": [t + 2 for t in totals],
                    "temporal": [t - 3 for t in totals]}
            for split, totals in (("seen", seen), ("held-out", held_out))} | {"seconds_per_video": 1.0}


def latency(label, device, seconds, nfe, first_frame_nfe=0, dit=5.88e6, total=9.1e6, peak=2**30):
    return {"label": label, "device": device, "threads": 2, "nfe": nfe, "first_frame_nfe": first_frame_nfe,
            "seconds_median": seconds, "peak_memory_bytes": peak,
            "parameters": {"transformer": dit, "total": total}}


SHAPESBENCH = {"seeds": [0, 1], "num_prompts": 32,
               "table": {"teacher": scores([80.0, 82.0], [76.0, 77.0]), "pruned": scores([75.0, 74.0], [70.0, 73.0])}}
CPU = [latency("teacher", "cpu", 9.47, 480), latency("pruned", "cpu", 7.1, 480, dit=4.69e6),
       latency("hybrid", "cpu", 7.6, 18, first_frame_nfe=120)]
GPU = [latency("pruned", "cuda", 0.63, 480, dit=4.69e6, peak=1914 * 2**20)]


def test_rows_join_both_scripts_by_label(tmp_path):
    paths = {}
    for name, content in (("sb", SHAPESBENCH), ("cpu", CPU), ("gpu", GPU)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(content))
    out = tmp_path / "ablation.md"
    text = ablation.main(["--shapesbench", str(paths["sb"]), "--cpu", str(paths["cpu"]), "--gpu", str(paths["gpu"]),
                          "--output", str(out)])
    assert out.read_text() == text
    table = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()
             if line.startswith("| ")]
    assert [row[0] for row in table] == ["step", "teacher", "pruned", "hybrid"]  # costs-only rows after scored ones
    teacher, pruned, hybrid = table[1:]
    assert teacher[1:7] == ["5.88M", "9.10M", "480", "9.47", "–", "–"]
    assert teacher[7:10] == ["81.0 (80.0/82.0)", "+0.0", "82.0 / 83.0 / 78.0"]
    assert pruned[1] == "4.69M" and pruned[5:7] == ["0.630", "1914"]
    assert pruned[7:9] == ["74.5 (75.0/74.0)", "-6.5"] and pruned[10:12] == ["71.5 (70.0/73.0)", "-5.0"]
    assert hybrid[3] == "120 + 18" and hybrid[5:] == ["–"] * 8
    assert "32 prompts per split, means over seeds 0,1" in text and "CPU with 2 threads" in text


def test_bad_inputs_are_refused(tmp_path):
    sb, cpu = tmp_path / "sb.json", tmp_path / "cpu.json"
    sb.write_text(json.dumps(SHAPESBENCH))
    cpu.write_text(json.dumps(GPU))
    with pytest.raises(SystemExit, match="not measured on the CPU"):
        ablation.main(["--shapesbench", str(sb), "--cpu", str(cpu)])
    cpu.write_text(json.dumps(CPU + CPU[:1]))
    with pytest.raises(SystemExit, match="'teacher' is measured twice"):
        ablation.main(["--shapesbench", str(sb), "--cpu", str(cpu)])
    with pytest.raises(SystemExit, match="cannot read"):
        ablation.main(["--shapesbench", str(tmp_path / "missing.json"), "--cpu", str(cpu)])
