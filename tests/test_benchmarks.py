"""The benchmarks run end to end on small settings and report the numbers they claim to."""

import json

import pytest
from conftest import needs_devices

from experiments import bench_epoch, bench_grid, bench_memory, bench_methods, bench_parallel, bench_step


def test_bench_step_times_sid_against_bp(tmp_path):
    out = tmp_path / "step.json"
    report = bench_step.main(["--model", "mlp", "--num-modules", "3", "--batch-size", "32", "--steps", "20",
                              "--json", str(out)])  # fmt: skip
    assert json.loads(out.read_text())["methods"].keys() == {"sid", "bp"}
    # the same network plus three small heads' local losses: near BP's time, not a multiple of it
    assert 0.3 < report["sid_over_bp_time"] < 3.0, report


@pytest.mark.slow  # ~30 s: seven methods compiled
def test_bench_methods_measures_every_compared_method_beside_sid(tmp_path):
    out = tmp_path / "methods.json"
    bench_methods.main(["--smoke", "--only", "mlp4_blockwise", "--steps", "1", "--json", str(out)])
    results = json.loads(out.read_text())["networks"]["mlp4_blockwise"]
    assert set(results) == {"sid", "dgl", "bp", "fa", "dfa", "ff", "hsic", "linear"}
    assert all(r["memory_bytes"] > 0 and r["median_step_s"] > 0 for r in results.values())
    assert all(r["examples_per_s"] == pytest.approx(32 / r["median_step_s"]) for r in results.values())
    full = bench_methods.networks()["mlp4_blockwise"]
    assert full["hsic"].batch_size == 512 and full["sid"].batch_size == 128  # the HSIC authors' batch


@pytest.mark.slow  # the notebook 03 test asserts the same ratio (tiny ViT, K = 4) in the default suite
def test_bench_memory_shows_blockwise_sid_holding_less_than_bp():
    report = bench_memory.main(["--model", "vit_tiny", "--tiny", "--input-shape", "16,16,3", "--batch-size", "32",
                                "--ks", "4,5", "--steps", "1", "--variants", "bp,bp_remat,sid_sequential,sid_stages"])  # fmt: skip
    assert [r["num_blocks"] for r in report["results"]] == [4]  # K=5 > 4 tiny blocks: skipped, not fatal
    methods = report["results"][0]["methods"]
    assert set(methods) == {"bp", "bp_remat", "sid_sequential", "sid_stages"}
    # measured on a 2-core CPU: stages 0.25x, one-program sequential 0.45x, remat 0.28x BP's memory
    assert methods["sid_stages"]["memory_vs_bp"] < 0.4
    assert methods["sid_sequential"]["memory_vs_bp"] < 0.7
    assert methods["bp_remat"]["memory_vs_bp"] < 0.5


def test_bench_epoch_keeps_the_device_as_busy_as_the_isolated_step(fashion_mnist, tmp_path):
    out = tmp_path / "epoch.json"
    report = bench_epoch.main(["--runs", "trunk:mlp:sid,trunk:mlp:bp", "--limit-train", "2560", "--epochs", "2",
                               "--rounds", "5", "--round-steps", "4", "--json", str(out)])  # fmt: skip
    for result in report["results"]:
        assert 0.5 < result["epoch_over_step_throughput"] < 2.0, result
    assert json.loads(out.read_text())["results"] == report["results"]


@pytest.mark.slow  # a process per device count: ~2 minutes of start-ups and compiles
@needs_devices(2)
def test_bench_parallel_runs_one_process_per_device_count(tmp_path):
    out = tmp_path / "parallel.json"
    report = bench_parallel.main(["--tiny", "--num-blocks", "2", "--devices", "1,2", "--input-shape", "8,8,1",
                                  "--batch-size", "8", "--steps", "2", "--json", str(out)])  # fmt: skip
    assert [r["devices"] for r in report["results"]] == [1, 2]
    one, two = (r["examples_per_s"] for r in report["results"])
    assert set(one) == {"bp", "sid_sync", "sid_pipelined", "sid_pipelined_mesh"}
    for method in one:  # simulated devices share the cores: no speed-up, but no collapse either
        assert 0.05 < two[method] / one[method] < 20, (method, one, two)
    assert json.loads(out.read_text())["note"].startswith("simulated CPU devices")


def test_bench_grid_trains_the_grid_in_one_program_compiled_once(tmp_path):
    out = tmp_path / "grid.json"
    report = bench_grid.main(["--tiny", "--limit-train", "1280", "--lrs", "1e-4,1e-3", "--seeds", "0,1",
                              "--epochs", "1", "--json", str(out)])  # fmt: skip
    assert report["members"] == 4 and report["compiles_during_timed_grid_epochs"] == 0
    # four members in one program against four programs: the same work, not a multiple of it
    assert 0.3 < report["grid_over_separate"] < 3.0, report
    assert json.loads(out.read_text())["grid_over_separate"] == report["grid_over_separate"]


@pytest.mark.slow  # ~3 minutes on 2 cores: 26 steps compiled
def test_bench_methods_runs_every_local_rule_in_every_execution_beside_bp(tmp_path):
    out = tmp_path / "executions.json"
    report = bench_methods.main(["--executions", "--smoke", "--steps", "1", "--json", str(out)])
    vit = report["networks"]["vit_tiny_K8"]
    assert {"bp", "bp_remat", "sid sequential", "ff sequential", "hsic sequential", "dgl vmap"} <= set(vit)
    assert vit["bp"]["memory_vs_bp"] == 1.0 and all(r["memory_bytes"] > 0 for r in vit.values())
    # every local rule walked one unit after another holds less than its fused step (tiny ViT, K = 4)
    for rule in ("sid", "dgl", "ff", "hsic"):
        assert vit[f"{rule} sequential"]["memory_bytes"] < vit[f"{rule} fused"]["memory_bytes"], rule
