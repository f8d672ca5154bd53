"""benchmarks/benchmark_dit_calls.py on the CPU with two full-width blocks."""

import json

from tests.script_loading import load_script


def test_each_variant_times_the_three_stage_calls_and_fused_matches_separate(tmp_path):
    script = load_script("benchmarks/benchmark_dit_calls.py")
    out = tmp_path / "dit_calls.json"
    report = script.main(["--device", "cpu", "--dtype", "float32", "--num-layers", "2", "--repeats", "1",
                          "--json", str(out)])
    assert list(report["rows"]) == ["separate q/k/v", "fused q/k/v"]
    for row in report["rows"].values():
        assert [name for name in row if name != "total ms"] == ["stage 0", "stage 1", "stage 2"]
        assert all(row[name]["ms"] > 0 for name in ("stage 0", "stage 1", "stage 2"))
    assert all(v["relative_l2"] == 0 for k, v in report["rows"]["separate q/k/v"].items() if k != "total ms")
    # one multiply instead of three: the same numbers up to float32 rounding
    assert all(v["relative_l2"] < 1e-5 for k, v in report["rows"]["fused q/k/v"].items() if k != "total ms")
    assert json.loads(out.read_text())["rows"] == report["rows"]
