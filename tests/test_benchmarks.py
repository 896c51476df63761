"""The benchmarks run end to end on tiny settings and report what they claim to."""

import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))

import bench_memory  # noqa: E402
import bench_parallel  # noqa: E402
import bench_step  # noqa: E402


def test_bench_step_reports_both_methods_and_their_ratio(tmp_path):
    out = tmp_path / "step.json"
    report = bench_step.main(
        ["--model", "mlp", "--num-modules", "3", "--batch-size", "8", "--steps", "2", "--json", str(out)]
    )
    assert json.loads(out.read_text())["sid_over_bp_time"] == report["sid_over_bp_time"]
    sid, bp = report["methods"]["sid"], report["methods"]["bp"]
    assert math.isclose(report["sid_over_bp_time"], sid["median_step_s"] / bp["median_step_s"])
    assert sid["temp_bytes"] > 0 and bp["examples_per_s"] > 0


def test_bench_memory_covers_every_k_and_execution(tmp_path):
    out = tmp_path / "memory.json"
    report = bench_memory.main(
        ["--model", "vit_tiny", "--tiny", "--input-shape", "8,8,1", "--batch-size", "2", "--ks", "2,3,5",
         "--steps", "1", "--json", str(out)]
    )  # fmt: skip
    assert [r["num_blocks"] for r in report["results"]] == [2, 3]  # K=5 > 4 tiny blocks: skipped, not fatal
    stacked, uneven = report["results"]
    assert set(stacked["methods"]) == {"bp", "bp_remat", "sid_fused", "sid_sequential", "sid_vmap"}
    assert "sid_vmap" not in uneven["methods"]  # 4 blocks in 3 groups are not identical
    assert stacked["methods"]["bp"]["temp_vs_bp"] == 1.0
    assert json.loads(out.read_text())["results"][0]["num_blocks"] == 2


def test_bench_parallel_runs_one_process_per_device_count(tmp_path):
    out = tmp_path / "parallel.json"
    report = bench_parallel.main(
        ["--tiny", "--num-blocks", "2", "--devices", "1,2", "--input-shape", "8,8,1", "--batch-size", "8",
         "--steps", "1", "--json", str(out)]
    )  # fmt: skip
    assert [r["devices"] for r in report["results"]] == [1, 2]
    assert "--xla_force_host_platform_device_count=2" in report["results"][1]["xla_flags"]
    for r in report["results"]:
        assert set(r["examples_per_s"]) == {"bp", "sid_sync", "sid_pipelined"}
        assert all(v > 0 for v in r["examples_per_s"].values())
    assert json.loads(out.read_text())["note"].startswith("simulated CPU devices")
