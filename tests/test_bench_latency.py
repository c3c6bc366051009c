"""bench latency: interleaving, statistics, the JSON schema on real tiny bundles, the CLI and the fingerprint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_fixtures import bundle_or_skip  # noqa: E402

from acula_edge.bench.fingerprint import cpu_flags, cpu_model  # noqa: E402
from acula_edge.bench.latency import (STAGES, HopBench, LatencyConfig, bench_latency,  # noqa: E402
                                      measure_interleaved, round_order, summarise_ms)
from acula_edge.bench.report import (LATENCY_BUNDLE_KEYS, LATENCY_KEYS, LATENCY_SCHEMA,  # noqa: E402
                                     LATENCY_SCHEMA_VERSION, STAT_KEYS, check_document, latency_table)
from acula_edge.cli import main  # noqa: E402
from acula_edge.errors import ConfigError  # noqa: E402


def test_round_order_rotates_the_start():
    assert [round_order(r, 3) for r in range(4)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]


def test_measure_interleaved_runs_round_robin_and_counts_runs():
    calls: list[tuple[str, int]] = []

    def step(i: int):
        def run() -> dict[str, int]:
            calls.append(("run", i))
            return {"hop": i}
        return run

    samples, _, rounds = measure_interleaved([step(0), step(1), step(2)], warmup=1, runs=3, min_seconds=0.0)
    order = [i for _, i in calls]
    assert order[:3] == [0, 1, 2]  # warm-up round 0
    assert order[3:] == [0, 1, 2, 1, 2, 0, 2, 0, 1]  # timed rounds 0, 1, 2
    assert rounds == 3 and [len(s) for s in samples] == [3, 3, 3]
    assert samples[1] == [{"hop": 1}] * 3


def test_measure_interleaved_runs_until_min_seconds():
    t = iter(range(1000))  # a clock that advances one "second" per reading
    samples, elapsed, rounds = measure_interleaved([lambda: {"hop": 0}], warmup=0, runs=1, min_seconds=5.0,
                                                   clock=lambda: float(next(t)))
    assert rounds == 5 and len(samples[0]) == 5 and elapsed == 6.0


def test_summarise_ms():
    s = summarise_ms([1_000_000, 2_000_000, 3_000_000, 4_000_000])
    assert tuple(s) == STAT_KEYS
    assert s["n"] == 4 and s["mean"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0 and s["p50"] == 2.5
    assert s["p90"] == pytest.approx(3.7)


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="threads must be >= 1.*runs must be >= 1"):
        LatencyConfig(threads=0, runs=0)
    with pytest.raises(ConfigError, match="min_seconds"):
        LatencyConfig(min_seconds=float("nan"))


@pytest.fixture(scope="module")
def bundles() -> list[Path]:
    return [bundle_or_skip("onnx-fp32"), bundle_or_skip("tflite-int8")]


def test_hop_bench_times_the_session_path_and_its_windows_equal_the_offline_front_end(bundles):
    from acula_edge.features import LogMel, normalise_window
    from acula_edge.runtime.model import load

    model = load(bundles[0], num_threads=1)
    calls = []
    run = model.backend.run
    model.backend.run = lambda x: calls.append(np.array(x)) or run(x)
    bench = HopBench(model, seed=3)
    assert calls == []  # the first inference is timed on a model that was never called
    bench.first_inference_ns()
    assert len(calls) == 1
    steps = [bench.step() for _ in range(70)]  # past the end of the looped signal
    # every hop ran the session (its first window, then one per hop) plus the model_switch call
    assert bench.session.windows_done == 71 and len(calls) == 1 + 1 + 70 + 70
    for st in steps:  # the stages are parts of the session's own push
        assert 0 < st["frontend"] and 0 < st["model"] and st["hop"] == st["frontend"] + st["model"] <= st["session"]
    fed = np.concatenate([bench.signal[:bench.window],
                          np.take(bench.signal, np.arange(bench.window, bench.window + 70 * bench.hop),
                                  mode="wrap")])
    expected = normalise_window(LogMel(model.frontend)(fed)[-model.frames_per_window:], model.frontend)
    # the session's last model call (after each step's model_switch call) ran the last window of what was fed
    np.testing.assert_allclose(calls[-1].reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)  # batching: ULPs


def test_bench_latency_document_matches_the_schema(bundles):
    doc = bench_latency(bundles, LatencyConfig(threads=1, warmup=2, runs=25, min_seconds=0.0))
    check_document(doc, LATENCY_SCHEMA, LATENCY_SCHEMA_VERSION)
    assert tuple(doc) == LATENCY_KEYS
    assert doc["rounds"] >= 25 and doc["config"]["interleaved"] is True
    assert doc["machine"]["logical_cores"] >= 1 and doc["machine"]["packages"]["numpy"] == np.__version__
    for path, b in zip(bundles, doc["bundles"]):
        assert tuple(b) == LATENCY_BUNDLE_KEYS
        assert b["bundle"] == str(path) and b["model_bytes"] == (path / b["model_file"]).stat().st_size
        assert b["runs"] >= 25 and b["threads"] == 1
        for stage in STAGES:
            assert tuple(b["stages_ms"][stage]) == STAT_KEYS
            assert len(b["samples_ms"][stage]) == b["runs"] >= 25
            st = b["stages_ms"][stage]
            assert 0 < st["min"] <= st["p50"] <= st["p90"] <= st["p99"] <= st["max"]
        hop = np.array(b["samples_ms"]["hop"])
        parts = np.array(b["samples_ms"]["frontend"]) + np.array(b["samples_ms"]["model"])
        np.testing.assert_allclose(hop, parts, atol=2e-6)  # one span = its two parts (rounded to 1 ns)
        assert b["rtf"]["hop"]["mean"] == pytest.approx(b["stages_ms"]["hop"]["mean"] / 1e3 / b["hop_s"])
        assert b["cold_load_ms"] > 0 and b["load_ms"] > 0 and b["first_inference_ms"] > 0
        assert b["peak_rss_after_load_bytes"] > 0
    assert doc["peak_rss_bytes"] >= doc["bundles"][-1]["peak_rss_after_load_bytes"]
    table = latency_table(doc)
    assert "onnx fp32" in table and "tflite int8" in table and "RTF" in table


def test_cli_latency_writes_json(bundles, tmp_path, capsys):
    out = tmp_path / "lat.json"
    main(["bench", "latency", str(bundles[0]), "--runs", "5", "--warmup", "1", "--min-seconds", "0",
          "--json-out", str(out), "--markdown"])
    doc = json.loads(out.read_text())
    assert doc["schema"] == LATENCY_SCHEMA and doc["bundles"][0]["runs"] >= 5
    assert doc["command"].startswith("acula-edge bench latency ") and "--runs 5" in doc["command"]
    assert capsys.readouterr().out.startswith("| bundle | target |")


def test_cli_latency_bad_bundle_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "latency", str(tmp_path / "nope"), "--runs", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no such bundle folder" in err[0]


def test_cpu_model_and_flags_from_cpuinfo_text():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
    pi4 = ("processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\nFeatures\t: fp asimd crc32\n\n"
           "Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n")
    arm = "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n"
    assert cpu_model(x86) == "AMD EPYC 9B14"
    assert cpu_flags(x86) == ["avx2", "avx512_vnni", "avx512f"]
    assert cpu_model(pi4) == "Raspberry Pi 4 Model B Rev 1.4" and cpu_flags(pi4) == ["asimd"]
    assert cpu_model(arm) == "ARM implementer 0x41 part 0xd08"


def test_bench_modules_import_neither_torch_nor_matplotlib():
    import subprocess

    code = ("import sys\n"
            "import acula_edge.bench.cli, acula_edge.bench.latency, acula_edge.bench.accuracy\n"
            "import acula_edge.bench.metrics, acula_edge.bench.report, acula_edge.bench.plots\n"
            "import acula_edge.bench.probe, acula_edge.bench.fingerprint\n"
            "print(sorted(m for m in ('torch', 'matplotlib', 'onnxruntime') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
