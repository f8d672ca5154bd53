"""benchmarks/shapesbench_compare.py: several (pipeline, seed) ShapesBench runs in parallel processes, one table."""

import argparse
import json

import pytest

from tests.script_loading import load_script
from tests.tiny_components import monolithic_pipeline


def test_compare_runs_every_entry_and_seed_and_reuses_kept_results(tmp_path, capsys, monkeypatch):
    compare = load_script("benchmarks/shapesbench_compare.py")
    folder = tmp_path / "tiny"
    monolithic_pipeline(num_frames=9).save_pretrained(folder)
    results = tmp_path / "results"
    entries = [f"teacher={folder} --steps 1 --first-frame-steps 1 --device cpu",
               f"student={folder} --steps 2 --first-frame-steps 1 --device cpu"]
    table = compare.main([*entries, "--seeds", "0,1", "--num-prompts", "1", "--jobs", "2", "--threads", "1",
                          "--results-dir", str(results), "--json", str(tmp_path / "table.json")])
    assert list(table) == ["teacher", "student"]
    kept = sorted(p.name for p in results.iterdir())
    assert kept == [f"{label}_seed{seed}_n1.json" for label in ("student", "teacher") for seed in (0, 1)]
    for label, row in table.items():
        for split in ("seen", "held-out"):
            # each seed's total is that run's own summary
            for seed, total in zip((0, 1), row[split]["score"]):
                report = json.loads((results / f"{label}_seed{seed}_n1.json").read_text())
                assert total == report["summary"][split]["score"]
                assert report["settings"]["seed"] == seed
    out = capsys.readouterr().out
    assert "teacher" in out and "student" in out and "+0.0" in out  # the first row's difference to itself
    # A second call with the same entry reuses the kept JSON files instead of generating again ...
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("generated again"))
    again = compare.main([entries[0], "--seeds", "0,1", "--num-prompts", "1", "--results-dir", str(results),
                          "--markdown"])
    assert again["teacher"] == table["teacher"]
    assert "| pipeline |" in capsys.readouterr().out
    # ... and refuses them for the same label with other settings.
    with pytest.raises(ValueError, match="other settings .*steps"):
        compare.main([entries[0].replace("--steps 1", "--steps 3"), "--seeds", "0", "--num-prompts", "1",
                      "--results-dir", str(results)])
    assert json.loads((tmp_path / "table.json").read_text())["table"]["student"] == table["student"]


def test_entries_and_failures_are_reported_clearly(tmp_path):
    compare = load_script("benchmarks/shapesbench_compare.py")
    assert compare.parse_entry("a=b/c --mode hybrid") == ("a", "b/c", ["--mode", "hybrid"])
    for bad in ("folder-only", "=folder", "a b=folder"):
        with pytest.raises(argparse.ArgumentTypeError):
            compare.parse_entry(bad)
    with pytest.raises(RuntimeError, match="shapesbench failed for broken"):
        compare.compare([("broken", str(tmp_path / "missing"), ["--device", "cpu"])], [0], 1, 1, None, threads=1)
