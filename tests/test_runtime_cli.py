"""acula-edge info / classify / stream."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_fixtures as rf  # noqa: E402

import acula_edge  # noqa: E402


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    import soundfile as sf

    path = tmp_path_factory.mktemp("audio") / "rec.wav"
    sf.write(path, rf.heart_like(7.2, 2000, seed=9, silence=(0.0, 4.2)), 2000, subtype="FLOAT")
    return path


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from acula_edge.cli import main; main()", *args],
                          input=stdin, capture_output=True, timeout=120)


def test_info_prints_manifest_and_tflm_memory_budget():
    bundle = rf.bundle_or_skip("tflm-int8")
    out = cli("info", str(bundle))
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    assert "target: tflm (int8)" in text and "labels: normal, abnormal\n" in text
    assert "decision: P(positive) >= 0.5 (manifest threshold)" in text
    assert "input: logmel [1, 1, 196, 32] int8, scale" in text
    as_json = json.loads(cli("info", str(bundle), "--json").stdout)
    assert as_json["target"] == "tflm" and as_json["labels"] == ["normal", "abnormal"]
    # the firmware budget: each total with its parts, in bytes, and the parts add up to the total
    extra, fe = as_json["extra"], as_json["extra"]["frontend_memory"]
    model, tables = extra["model_bytes"], fe["flash_bytes"]
    arena, state, window = extra["arena_bytes"], fe["ram_bytes"], fe["window_bytes"]
    assert window == 196 * 32 * 4 and arena == extra["arena_bytes_measured"] + 1024
    assert extra["memory"]["flash_bytes"] == model + tables
    assert extra["memory"]["ram_bytes"] == arena + state + window
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in text.splitlines()}
    flash, ram = model + tables, arena + state + window
    assert lines["firmware flash"] == (f"{flash:,} B ({flash / 1024:.1f} KiB) = model {model:,} B "
                                       f"({model / 1024:.1f} KiB) + front-end tables {tables:,} B "
                                       f"({tables / 1024:.1f} KiB)  (code not included)")
    assert lines["firmware RAM"].startswith(f"{ram:,} B ({ram / 1024:.1f} KiB) = tensor arena {arena:,} B")
    assert f"+ front-end state {state:,} B" in lines["firmware RAM"]
    assert lines["firmware RAM"].endswith(f"+ input window {window:,} B ({window / 1024:.1f} KiB)")
    assert lines["tensor arena"].startswith(f"{extra['arena_bytes_measured']:,} B measured")


def test_info_prints_no_firmware_budget_for_other_targets():
    from acula_edge.runtime.cli import firmware_budget_rows

    assert firmware_budget_rows({"model_bytes": 1000}) == []
    # a tflm manifest without the C front-end (optional) still shows the model and arena parts
    rows = dict(firmware_budget_rows({"memory": {"flash_bytes": 5000, "ram_bytes": 9000}, "model_bytes": 5000,
                                      "arena_bytes": 9000, "arena_bytes_measured": 7976}))
    assert rows["firmware flash"] == "5,000 B (4.9 KiB) = model 5,000 B (4.9 KiB)  (code not included)"
    assert rows["firmware RAM"] == "9,000 B (8.8 KiB) = tensor arena 9,000 B (8.8 KiB)"
    assert rows["tensor arena"].startswith("7,976 B measured") and rows["tensor arena"].endswith("+ 1,024 B margin")


def test_classify_table_json_csv(recording):
    bundle = rf.bundle_or_skip("onnx-fp32")
    expected = acula_edge.load(bundle).classify_file(recording)
    table = cli("classify", str(bundle), str(recording)).stdout.decode().splitlines()
    assert table[0].split() == ["file", "duration_s", "windows", "excluded", "p_normal", "p_abnormal", "label",
                                "decision"]
    assert table[1].split()[:4] == [str(recording), "7.20", "4", "1"]
    d = json.loads(cli("classify", str(bundle), str(recording), "--format", "json", "--windows").stdout)
    assert d["n_windows"] == 4 and len(d["windows"]) == 4 and d["windows"][0]["quality"]["flags"] == ["silence"]
    assert d["probabilities"]["abnormal"] == pytest.approx(float(expected.probabilities[1]), abs=1e-5)
    rows = list(csv.DictReader(io.StringIO(cli("classify", str(bundle), str(recording), "--format", "csv")
                                           .stdout.decode())))
    assert rows[0]["excluded"] == "1" and float(rows[0]["p_abnormal"]) == pytest.approx(expected.probabilities[1],
                                                                                          abs=1e-4)
    missing = cli("classify", str(bundle), "/nonexistent.wav")
    assert missing.returncode == 2 and b"error: /nonexistent.wav: no such file" in missing.stderr


def test_stream_file_and_stdin_json(recording):
    import soundfile as sf

    bundle = rf.bundle_or_skip("tflite-int8")
    expected = acula_edge.load(bundle).classify_file(recording)
    lines = [json.loads(s) for s in cli("stream", str(bundle), str(recording), "--json", "--chunk-ms", "250")
             .stdout.decode().splitlines()]
    assert [d["type"] for d in lines] == ["window", "update"] * 4 + ["recording"]
    assert lines[0]["included"] is False and lines[0]["quality"]["flags"] == ["silence"]
    assert lines[-1]["probabilities"]["abnormal"] == pytest.approx(float(expected.probabilities[1]), abs=1e-5)
    x, _ = sf.read(recording, dtype="float32")
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    out = cli("stream", str(bundle), "-", "--json", "--chunk-ms", "30", stdin=pcm)
    assert out.returncode == 0, out.stderr.decode()
    summary = json.loads(out.stdout.decode().splitlines()[-1])
    assert summary["n_windows"] == 4 and summary["source"] == "<stdin>"
    assert summary["probabilities"]["abnormal"] == pytest.approx(float(expected.probabilities[1]), abs=0.01)
    odd = cli("stream", str(bundle), "-", "--json", stdin=pcm + b"\x01")  # a truncated last int16 sample
    assert odd.returncode == 0 and json.loads(odd.stdout.decode().splitlines()[-1])["n_windows"] == 4
    assert b"warning: stdin ended with 1 byte(s) that are not a whole int16 sample" in odd.stderr
    f32 = cli("stream", str(bundle), "-", "--pcm-format", "float32", "--sample-rate", "2000",
              stdin=x.astype("<f4").tobytes())
    text = f32.stdout.decode()
    assert "window 0" in text and "excluded: silence" in text and text.splitlines()[-1].startswith("summary: 7.20 s")
    from acula_edge.audio import resample

    x8k = resample(x, 2000, 8000)
    pcm8k = (np.clip(x8k, -1, 1) * 32767).astype("<i2").tobytes()
    at8k = json.loads(cli("stream", str(bundle), "-", "--json", "--sample-rate", "8000", stdin=pcm8k)
                      .stdout.decode().splitlines()[-1])
    assert at8k["n_windows"] == 4 and at8k["duration_s"] == pytest.approx(7.2)
    assert at8k["probabilities"]["abnormal"] == pytest.approx(float(expected.probabilities[1]), abs=0.02)
    wrong = cli("stream", str(bundle), "-", "--sample-rate", "100", stdin=pcm)
    assert wrong.returncode == 2 and b"sample rate 100 Hz is outside the supported" in wrong.stderr
