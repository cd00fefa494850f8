"""The benchmark runs end to end and reports every figure it promises (tiny sizes: speed is not tested)."""

import json
import sys

import pytest

import charnn.bench.benchmark as bench
import charnn.bench.startup as bench_startup
from charnn.bench.benchmark import BenchOptions, TrainCase, run_benchmark
from charnn.cli import main


def test_bench_reports_every_row(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench_startup, "RUNS", 2)
    monkeypatch.setattr(bench_startup, "MODEL", {"num_layers": 1, "hidden_size": 16})
    monkeypatch.setattr(bench, "QUICK_TRAIN", (TrainCase(1, 16, 4, 8),))
    monkeypatch.setattr(bench, "QUICK_STREAMS", (1, 3))
    monkeypatch.setattr(bench, "SAMPLE_MODEL", (2, 32))
    monkeypatch.setattr(bench, "SAMPLING_PAUSE", 0.0)
    report = run_benchmark(BenchOptions(quick=True, seconds=0.05, corpora_mb=(1,), workdir=tmp_path,
                                        corpus_steps=2, startup_rounds=1))
    c = report.ceilings
    assert min(c["gemm_gflops_torch"], c["gemm_gflops_numpy"], c["read_gb_per_sec"], c["cached_read_gb_per_sec"]) > 0
    assert c["gemm_gflops"] == max(c["gemm_gflops_torch"], c["gemm_gflops_numpy"])  # the best either library does
    (train,) = report.training
    assert train["config"] == "1x16 b4 s8"
    assert train["chars_per_sec"] > 0 and train["reference_chars_per_sec"] > 0 and train["ratio"] > 0
    assert [row["streams"] for row in report.sampling] == [1, 3]
    assert {"bandwidth_share", "cached_share"} <= set(report.sampling[0]) and "ceiling_share" in report.sampling[1]
    assert all(row["ratio"] > 0 for row in report.sampling)
    (corpus,) = report.corpora
    assert corpus["megabytes"] == 1 and corpus["tokens"] == 1_000_000
    assert corpus["encode_mb_per_sec"] > 0 and corpus["peak_rss_mb"] > 0
    assert list((tmp_path / "runs" / ".cache").glob("*.npy"))  # the second run found the cache
    assert [row["command"] for row in report.startup][2:] == list(bench_startup.GOALS)
    assert all(row["seconds"] > 0 for row in report.startup)


def test_bench_command_writes_json(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "QUICK_TRAIN", (TrainCase(1, 8, 2, 4),))
    monkeypatch.setattr(bench, "QUICK_STREAMS", (1,))
    monkeypatch.setattr(bench, "SAMPLE_MODEL", (1, 16))
    monkeypatch.setattr(bench, "SAMPLING_PAUSE", 0.0)
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--seconds", "0.05", "--corpus-mb", "0", "--startup-rounds", "0", "--json",
                 str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # the table is for people: stderr
    assert "training" in captured.err and "sampling" in captured.err and "numpy's BLAS" in captured.err
    data = json.loads(out.read_text())
    assert set(data) == {"machine", "ceilings", "training", "sampling", "corpora", "startup"}
    assert data["corpora"] == [] and data["startup"] == []
    assert main(["bench", "--seconds", "-1"]) == 1 and main(["bench", "--startup-rounds", "-1"]) == 1


def test_bench_shows_the_mixed_precision_beside_fp32_where_the_device_has_it(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "mixed_candidate", lambda device: "bf16")  # bf16 runs (emulated) on any CPU
    rows = bench.bench_training((TrainCase(1, 16, 4, 8),), "cpu", 0.05, log=lambda message: None)
    assert rows[0]["mixed_precision"] == "bf16" and rows[0]["mixed_chars_per_sec"] > 0
    assert rows[0]["mixed_gain"] == pytest.approx(rows[0]["mixed_chars_per_sec"] / rows[0]["chars_per_sec"], rel=1e-2)
    from charnn.cli.bench import _training_table  # noqa: PLC0415

    rows[0]["ceiling_share"] = 0.5  # run_benchmark adds it
    assert "charnn bf16" in [column.header for column in _training_table(rows).columns]


def test_the_busy_benchmark_measures_every_mode_beside_every_load_and_stops_its_competitors(tmp_path):
    import os  # noqa: PLC0415

    from charnn.bench.busy import Plans, run_busy, synthetic_corpus  # noqa: PLC0415

    corpus = synthetic_corpus(tmp_path / "corpus.txt", chars=200_000)
    runs = tmp_path / "runs"
    runs.mkdir()
    report = run_busy(0.3, Plans(corpus, tries=1, runs=runs), loads={"one core": ("full",)}, workloads=("sample 1",))
    rates = report.rates["sample 1"]
    assert set(rates) == {"one core"}
    assert all(set(r) == {"1 thread", "all threads", "policy"} and min(r.values()) > 0 for r in rates.values())
    assert report.policy_share("sample 1", "one core") > 0
    assert set(report.plans) == {"one core"} and report.plans["one core"][0].startswith("2x")
    assert (runs / ".cache" / "speeds.json").is_file()  # the plans' speed memory, for the next load's plans
    spinning = [line for line in os.popen("ps -eo args").read().splitlines() if line.startswith(sys.executable)
                and "while True" in line]
    assert spinning == []  # the competitors are gone


def test_the_busy_benchmark_alternates_the_modes_of_a_cell_and_shows_the_median_of_its_repeats(monkeypatch):
    from charnn.bench import busy  # noqa: PLC0415

    calls = []
    speeds = {"1": [10.0, 30.0, 20.0], "2": [5.0, 6.0, 100.0], "auto": [11.0, 9.0, 12.0]}

    def fake_measure(work, threads, seconds):
        calls.append(threads)
        return speeds[threads][sum(c == threads for c in calls) - 1]

    monkeypatch.setattr(busy, "measure", fake_measure)
    monkeypatch.setattr(busy, "thread_modes", lambda: {"1 thread": "1", "all threads": "2", "policy": "auto"})
    report = busy.run_busy(1.0, loads={"idle": ()}, workloads=("eval",), repeats=3)
    # each repeat starts with another mode, so none always runs first (or last) beside a neighbour
    assert calls == ["1", "2", "auto", "2", "auto", "1", "auto", "1", "2"]
    assert report.rates["eval"]["idle"] == {"1 thread": 20.0, "all threads": 6.0, "policy": 11.0}
    assert report.samples["eval"]["idle"]["all threads"] == [5.0, 6.0, 100.0]
    assert report.policy_share("eval", "idle") == pytest.approx(11.0 / 20.0)
