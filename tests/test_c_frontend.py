"""The C99 firmware front-end (export/firmware) against the numpy reference LogMel.

Builds the C front-end with gcc -Werror for several configs (skipped without gcc) and checks: log-mel parity on
synthetic audio and real PhysioNet recordings, streaming with arbitrary chunk sizes, reset, int16 input, the
generated header (tables round-trip, memory budget, rejected configs) and that the example program builds and runs.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from acula_edge.errors import ConfigError, ExportError
from acula_edge.features import LogMel
from acula_edge.frontend import FrontendConfig, Windowing, analysis_window, mel_filterbank, preset

from acula_edge.export.firmware import cbuild, header

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_MAIN = REPO / "examples" / "firmware" / "main.c"

# Tolerances, in log-mel units (natural log of mel energy, after global normalisation).
ATOL = 1e-3  # every value: synthetic audio (either build), real recordings with the ACULA_FFT_DOUBLE build
# The default float32 build on real recordings: ATOL holds for bands within FLOAT32_RANGE_DB of the frame's loudest
# band. Quieter bands (heart sounds and upsampled audio span 60-110 dB) carry the float32 FFT's rounding of the
# loud bands, ~1e-7 of a frame's energy: up to ~4e-3 measured (numpy's float32 rfft is off by ~2e-3 there too).
FLOAT32_RANGE_DB = 40.0
FLOAT32_ALL_ATOL = 1e-2
# The -DACULA_Q15=1 build (Q15 samples, window and block-floating-point FFT; float mel and log) on the real
# recordings below, measured 2026-11-30 (the test prints them): max abs log-mel error in bands within
# FLOAT32_RANGE_DB of the frame's loudest band / over every value: heart 0.247 / 1.45, acula 1.26 / 8.1, custom
# 0.052 / 0.052. On synthetic audio bands within 40 dB are within 6e-4. Fixed point has ~90 dB of range below the
# frame's *whole* spectrum: PhysioNet frames whose energy sits below fmin (DC, < 25 Hz: not in any mel band) push
# the mel bands down that range (heart), and audio upsampled to 16 kHz (acula) leaves the bands above the source's
# Nyquist frequency empty (numpy sees them at -100 dB and lower, Q15 sees rounding noise). Bounds: those figures
# rounded up; a power scale off by 2 would add 0.69 to every value.
Q15_ATOL = {"heart": (0.3, 1.6), "acula": (1.5, 9.0), "custom": (0.1, 0.1)}

CONFIGS = {
    "heart": preset("heart")[0],
    "acula": preset("acula")[0],
    # Non-default: magnitude, hamming, window shorter than n_fft with an odd padding, offset and global norm.
    "custom": FrontendConfig(sample_rate=4000, n_fft=512, win_length=301, hop_length=75, window="hamming",
                             n_mels=24, fmin=40.0, fmax=1800.0, power=1.0, log_offset=1e-3, norm_mean=-2.0,
                             norm_std=3.0),
    # Hop longer than the window (samples between frames are skipped), per-window normalisation (C emits raw).
    "gap": FrontendConfig(sample_rate=2000, n_fft=128, win_length=100, hop_length=130, n_mels=16,
                          normalisation="per_window"),
}


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed; the C front-end cannot be built")
    return tmp_path_factory.mktemp("c_frontend")


@pytest.fixture(scope="module")
def c_frontends(build_dir):
    cache: dict[tuple[str, bool, bool], cbuild.CFrontend] = {}

    def get(name: str, fft_double: bool = False, q15: bool = False) -> cbuild.CFrontend:
        key = (name, fft_double, q15)
        if key not in cache:
            cache[key] = cbuild.CFrontend(CONFIGS[name], build_dir, fft_double=fft_double, q15=q15)
        fe = cache[key]
        fe.reset()
        return fe

    return get


def synthetic(cfg: FrontendConfig, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Sines, a chirp across the band, bursts and white noise at cfg.sample_rate, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    sr = cfg.sample_rate
    t = np.arange(int(seconds * sr)) / sr
    nyq = sr / 2
    f0, f1 = 0.01 * nyq, 0.95 * nyq
    chirp = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds)))
    bursts = 0.2 + 0.8 * np.sin(2 * np.pi * 1.2 * t) ** 8  # heart-sound-like amplitude bursts
    x = (0.4 * np.sin(2 * np.pi * 0.05 * nyq * t) * bursts + 0.15 * np.sin(2 * np.pi * 0.31 * nyq * t + 1.0)
         + 0.2 * chirp + 0.02 * rng.standard_normal(t.size))
    return (x / np.abs(x).max() * 0.9).astype(np.float32)


def db_below_peak(logmel: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """For each value of a log-mel (n, n_mels), how many dB its band is below the frame's loudest band."""
    raw = logmel * cfg.norm_std + cfg.norm_mean if cfg.normalisation == "global" else logmel
    per_neper = (10.0 if cfg.power == 2.0 else 20.0) / np.log(10.0)
    return (raw.max(axis=1, keepdims=True) - raw) * per_neper


@pytest.mark.parametrize("fft_double", [False, True], ids=["float32", "double"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_synthetic_matches_numpy(c_frontends, name, fft_double):
    cfg = CONFIGS[name]
    x = synthetic(cfg)
    got = c_frontends(name, fft_double).push(x)
    want = LogMel(cfg)(x)
    assert got.shape == want.shape == (cfg.num_frames(x.size), cfg.n_mels)
    err = float(np.abs(got - want).max())
    assert err <= ATOL, f"{name}: max abs log-mel error {err:.2e} > {ATOL}"


@pytest.fixture(scope="module")
def real_recordings(physionet_dir):
    """``get(sample_rate)``: the first 15 s of two recordings per PhysioNet subset at that rate, as a list of
    (path, float32 samples); resampled once per rate."""
    sf = pytest.importorskip("soundfile")
    from acula_edge.audio import resample

    with open(physionet_dir / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    picked: dict[str, list[dict]] = {}
    for row in rows:
        subset = row["path"].split("/")[0]
        if len(picked.setdefault(subset, [])) < 2:
            picked[subset].append(row)
    native = []
    for row in (r for group in picked.values() for r in group):
        data, rate = sf.read(str(physionet_dir / row["path"]), dtype="float32", always_2d=True)
        native.append((row["path"], data[:15 * rate, 0], int(rate)))
    cache: dict[int, list[tuple[str, np.ndarray]]] = {}

    def get(sample_rate: int) -> list[tuple[str, np.ndarray]]:
        if sample_rate not in cache:
            cache[sample_rate] = [(path, resample(x, rate, sample_rate, path)) for path, x, rate in native]
        return cache[sample_rate]

    return get


def worst_errors(fe, cfg, real_recordings) -> tuple[float, float]:
    """Max abs log-mel error of the C front-end ``fe`` vs numpy over the real recordings: (in bands within
    FLOAT32_RANGE_DB of each frame's peak, over all values)."""
    ref = LogMel(cfg)
    worst_loud = worst_all = 0.0
    for path, x in real_recordings(cfg.sample_rate):
        fe.reset()
        got, want = fe.push(x), ref(x)
        assert got.shape == want.shape, path
        err = np.abs(got - want)
        worst_loud = max(worst_loud, float(err[db_below_peak(want, cfg) <= FLOAT32_RANGE_DB].max()))
        worst_all = max(worst_all, float(err.max()))
    return worst_loud, worst_all


@pytest.mark.shared_data
@pytest.mark.parametrize("fft_double", [False, True], ids=["float32", "double"])
@pytest.mark.parametrize("name", ["heart", "acula", "custom"])
def test_real_recordings_match_numpy(c_frontends, real_recordings, name, fft_double):
    cfg = CONFIGS[name]
    worst_loud, worst_all = worst_errors(c_frontends(name, fft_double), cfg, real_recordings)
    if fft_double:
        assert worst_all <= ATOL, f"{name}: max abs log-mel error {worst_all:.2e} > {ATOL}"
    else:
        assert worst_loud <= ATOL, \
            f"{name}: bands within {FLOAT32_RANGE_DB} dB of the frame peak differ by {worst_loud:.2e} > {ATOL}"
        assert worst_all <= FLOAT32_ALL_ATOL, f"{name}: max abs log-mel error {worst_all:.2e} > {FLOAT32_ALL_ATOL}"


@pytest.mark.shared_data
@pytest.mark.parametrize("name", list(Q15_ATOL))
def test_q15_real_recordings_match_numpy(c_frontends, real_recordings, name):
    cfg = CONFIGS[name]
    worst_loud, worst_all = worst_errors(c_frontends(name, q15=True), cfg, real_recordings)
    print(f"Q15 {name}: max abs log-mel error {worst_loud:.3g} within {FLOAT32_RANGE_DB:g} dB of the frame peak, "
          f"{worst_all:.3g} over all values")
    loud_atol, all_atol = Q15_ATOL[name]
    assert worst_loud <= loud_atol and worst_all <= all_atol, (worst_loud, worst_all)


def test_q15_int16_and_float_input_agree_and_state_is_smaller(c_frontends):
    cfg = CONFIGS["heart"]
    pcm = (synthetic(cfg, 1.0, seed=4) * 20000).astype(np.int16)
    fe = c_frontends("heart", q15=True)
    from_int = fe.push_int16(pcm)
    fe.reset()
    np.testing.assert_array_equal(from_int, fe.push(pcm.astype(np.float32) / 32768.0))  # exact in Q15
    assert fe.state_bytes == header.frontend_memory(cfg, q15=True)["ram_bytes"] < c_frontends("heart").state_bytes


def test_q15_and_double_builds_exclude_each_other(build_dir):
    with pytest.raises(ExportError, match="ACULA_FFT_DOUBLE or ACULA_Q15"):
        cbuild.CFrontend(CONFIGS["heart"], build_dir, fft_double=True, q15=True)


@pytest.mark.parametrize("q15", [False, True], ids=["float32", "q15"])
@pytest.mark.parametrize("name", ["heart", "custom", "gap"])
def test_streaming_any_chunks_equals_offline(c_frontends, name, q15):
    cfg = CONFIGS[name]
    x = synthetic(cfg, seconds=2.0, seed=1)
    fe = c_frontends(name, q15=q15)
    offline = fe.push(x)
    rng = np.random.default_rng(7)
    sizes = [1, 1, 3, 7, cfg.win_length + 13, 1, cfg.hop_length - 1, 2 * cfg.win_length + 5, 0, 17]
    for trial in range(3):
        fe.reset()
        chunks, pos, i = [], 0, 0
        while pos < x.size:
            n = sizes[i] if trial == 0 and i < len(sizes) else int(rng.integers(1, 3 * cfg.win_length))
            i += 1
            chunk = x[pos:pos + n]
            assert fe.frames_for(chunk.size) == cfg.num_frames(pos + chunk.size) - cfg.num_frames(pos)
            chunks.append(fe.push(chunk))
            pos += chunk.size
        streamed = np.concatenate(chunks)
        np.testing.assert_array_equal(streamed, offline)  # same samples per frame -> bit-identical frames


def test_reset_starts_a_new_recording(c_frontends):
    cfg = CONFIGS["heart"]
    a, b = synthetic(cfg, 1.0, seed=2), synthetic(cfg, 1.5, seed=3)
    fe = c_frontends("heart")
    fresh = fe.push(b)
    fe.reset()
    fe.push(a[:333])  # leaves a partial frame buffered
    fe.reset()
    np.testing.assert_array_equal(fe.push(b), fresh)


def test_int16_input_is_scaled_like_soundfile(c_frontends):
    cfg = CONFIGS["heart"]
    pcm = (synthetic(cfg, 1.0, seed=4) * 20000).astype(np.int16)
    fe = c_frontends("heart")
    from_int = fe.push_int16(pcm)
    fe.reset()
    np.testing.assert_array_equal(from_int, fe.push(pcm.astype(np.float32) / 32768.0))


def test_push_refuses_too_small_output_and_consumes_nothing(c_frontends):
    import ctypes

    cfg = CONFIGS["heart"]
    x = synthetic(cfg, 1.0, seed=5)
    fe = c_frontends("heart")
    want = fe.push(x)
    fe.reset()
    k = fe.frames_for(x.size)
    assert k == want.shape[0]
    out = np.empty((k, cfg.n_mels), dtype=np.float32)
    f32p = ctypes.POINTER(ctypes.c_float)
    rc = fe._lib.acula_frontend_push(fe._state, x.ctypes.data_as(f32p), x.size, out.ctypes.data_as(f32p), k - 1)
    assert rc == -2  # ACULA_FRONTEND_ERR_SPACE
    rc = fe._lib.acula_frontend_push(fe._state, x.ctypes.data_as(f32p), -1, out.ctypes.data_as(f32p), k)
    assert rc == -1  # ACULA_FRONTEND_ERR_ARG
    np.testing.assert_array_equal(fe.push(x), want)


# --- generated header ---------------------------------------------------------------------------------------------

def _c_array(text: str, name: str) -> list[str]:
    m = re.search(rf"{name}\[[^\]]*\] = \{{(.*?)\}};", text, re.S)
    assert m, f"{name} not in header"
    return [v.strip() for v in m.group(1).split(",") if v.strip()]


def test_header_tables_round_trip_exactly(tmp_path):
    cfg = CONFIGS["custom"]
    mem = header.write_frontend_header(cfg, tmp_path / "frontend_params.h")
    text = (tmp_path / "frontend_params.h").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frontend_params.h"]  # no temp file left behind
    assert f"#define ACULA_N_FFT {cfg.n_fft} " in text
    assert f"#define ACULA_WIN_OFFSET {(cfg.n_fft - cfg.win_length) // 2} " in text
    assert "#define ACULA_POWER 1 " in text
    assert f'#define ACULA_CONFIG_SHA256 "{header.config_sha256(cfg)}"' in text
    # Window and twiddles are written as ACULA_R(<float64 literal>), cast to acula_fft_t by the compiler.
    window = [float(re.fullmatch(r"ACULA_R\((.*)\)", v).group(1)) for v in _c_array(text, "acula_window")]
    left = (cfg.n_fft - cfg.win_length) // 2
    np.testing.assert_array_equal(window, analysis_window(cfg)[left:left + cfg.win_length])
    cos = [float(re.fullmatch(r"ACULA_R\((.*)\)", v).group(1)) for v in _c_array(text, "acula_twiddle_cos")]
    np.testing.assert_allclose(cos, np.cos(2 * np.pi * np.arange(cfg.n_fft // 2) / cfg.n_fft), rtol=0, atol=1e-15)
    # Rebuild the dense filterbank from the sparse tables: identical to the float32 one LogMel uses.
    starts = [int(v) for v in _c_array(text, "acula_mel_start")]
    lens = [int(v) for v in _c_array(text, "acula_mel_len")]
    weights = [np.float32(v.rstrip("f")) for v in _c_array(text, "acula_mel_weights")]
    assert len(weights) == sum(lens) == mem["mel_weights"]
    dense = np.zeros((cfg.n_freqs, cfg.n_mels), dtype=np.float32)
    off = 0
    for b, (s, n) in enumerate(zip(starts, lens)):
        dense[s:s + n, b] = weights[off:off + n]
        off += n
    np.testing.assert_array_equal(dense, mel_filterbank(cfg).astype(np.float32))


def test_memory_budget_formula_for_heart():
    cfg, windowing = preset("heart")
    mem = header.frontend_memory(cfg, windowing)
    n_weights = int(np.count_nonzero(mel_filterbank(cfg).astype(np.float32)))
    assert mem["mel_weights"] == n_weights
    assert mem["flash_bytes"] == 4 * cfg.win_length + 4 * cfg.n_mels + 4 * n_weights + 4 * cfg.n_fft
    assert mem["ram_bytes"] == 4 * (cfg.win_length + cfg.n_fft + cfg.n_fft // 2 + 1) + 8
    assert mem["window_bytes"] == 4 * cfg.n_mels * windowing.frames_per_window(cfg)
    wide = header.frontend_memory(cfg, windowing, fft_double=True)
    assert wide["flash_bytes"] == mem["flash_bytes"] + 4 * cfg.win_length + 4 * cfg.n_fft
    assert wide["ram_bytes"] == mem["ram_bytes"] + 4 * cfg.n_fft + (-(mem["ram_bytes"] + 4 * cfg.n_fft) % 8)


@pytest.mark.parametrize("fft_double,q15", [(False, False), (True, False), (False, True)],
                         ids=["float32", "double", "q15"])
@pytest.mark.parametrize("name", ["heart", "acula"])
def test_memory_budget_matches_compiled_sizes(c_frontends, build_dir, name, fft_double, q15):
    cfg = CONFIGS[name]
    mem = header.frontend_memory(cfg, fft_double=fft_double, q15=q15)
    assert c_frontends(name, fft_double, q15).state_bytes == mem["ram_bytes"]
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) not installed; cannot measure the compiled tables")
    obj_dir = build_dir / f"obj-{name}-{fft_double}-{q15}"
    header.write_frontend_header(cfg, obj_dir / "frontend_params.h")
    obj = obj_dir / "acula_frontend.o"
    subprocess.run(["gcc", *cbuild.C_FLAGS, f"-DACULA_FFT_DOUBLE={int(fft_double)}", f"-DACULA_Q15={int(q15)}",
                    f"-I{obj_dir}",
                    f"-I{cbuild.FIRMWARE_DIR}", "-c", str(cbuild.FIRMWARE_DIR / "acula_frontend.c"), "-o", str(obj)],
                   check=True)
    listing = subprocess.run(["nm", "-S", str(obj)], capture_output=True, text=True, check=True).stdout
    tables = {parts[3]: int(parts[1], 16) for parts in (line.split() for line in listing.splitlines())
              if len(parts) == 4 and parts[2] in "rR" and parts[3].startswith("acula_")}
    assert sum(tables.values()) == mem["flash_bytes"], tables


def test_non_power_of_two_n_fft_is_rejected(tmp_path):
    cfg = FrontendConfig(n_fft=250, win_length=200)
    target = tmp_path / "frontend_params.h"
    with pytest.raises(ExportError, match=r"power of two.*n_fft=250.*n_fft=256"):
        header.write_frontend_header(cfg, target)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ExportError, match="power of two"):
        header.frontend_memory(cfg)


def test_header_needs_a_frontend_config(tmp_path):
    with pytest.raises(ConfigError, match="expected a FrontendConfig, got dict"):
        header.write_frontend_header(CONFIGS["heart"].to_dict(), tmp_path / "frontend_params.h")


def test_missing_compiler_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="not found on PATH"):
        cbuild.compile_frontend(CONFIGS["heart"], tmp_path, cc="no-such-compiler-acula")


# --- example program ----------------------------------------------------------------------------------------------

def test_example_program_builds_and_matches_numpy(build_dir):
    cfg = CONFIGS["heart"]
    windowing = Windowing(window_s=2.0, hop_s=0.5)
    exe = cbuild.compile_program(cfg, [EXAMPLE_MAIN], build_dir / "example" / "acula_frontend_demo",
                                 windowing=windowing)
    pcm = (synthetic(cfg, 4.1, seed=6) * 12000).astype("<i2")
    frames = LogMel(cfg)(pcm.astype(np.float32) / 32768.0)
    wf, hf = windowing.frames_per_window(cfg), windowing.frames_per_hop(cfg)
    n_windows = 1 + (frames.shape[0] - wf) // hf
    want = [float(frames[i * hf:i * hf + wf].astype(np.float64).mean()) for i in range(n_windows)]

    for fmt, data in (("s16", pcm.tobytes()), ("f32", (pcm.astype("<f4") / np.float32(32768.0)).tobytes())):
        res = subprocess.run([str(exe), fmt], input=data, capture_output=True, timeout=30, check=True)
        lines = res.stdout.decode().splitlines()
        assert lines[-1] == f"frames {frames.shape[0]} windows {n_windows}"
        got = [re.fullmatch(r"window (\d+) start_frame (\d+) mean (\S+)", line) for line in lines[:-1]]
        assert [(int(m.group(1)), int(m.group(2))) for m in got] == [(i, i * hf) for i in range(n_windows)]
        np.testing.assert_allclose([float(m.group(3)) for m in got], want, atol=1e-4)

    usage = subprocess.run([str(exe)], input=b"", capture_output=True, timeout=30)
    assert usage.returncode == 2 and b"usage" in usage.stderr
