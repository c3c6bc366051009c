"""The one window type, the one per-recording window choice and the one recording score (acula_edge.windows).

Every extractor must give exactly the windows :func:`recording_windows` cuts, at the indices :func:`choose_windows`
keeps; the expected values here are computed directly, the way each extractor computed them before they shared the
code (an evenly spaced ``linspace`` per recording; export's "two more, ends dropped" in two stages).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acula_edge.data import Dataset, Recording, load_dataset
from acula_edge.errors import DatasetError
from acula_edge.features import LogMel
from acula_edge.frontend import preset
from acula_edge.runtime.aggregation import RecordingAccumulator
from acula_edge.runtime.results import WindowEvent, WindowQuality
from acula_edge.windows import (Windows, choose_windows, extract_audio_windows, extract_windows, recording_scores,
                                recording_windows)

FE, WIN = preset("heart")
LABELS = ("normal", "abnormal")


@pytest.fixture(scope="module")
def data() -> Dataset:
    """Synthetic heart sounds of several lengths plus one shorter than a window (padded to one)."""
    ds = load_dataset("synthetic:heart?n=6&seed=5")
    short = Recording("short", "abnormal", samples=np.full(300, 0.1, np.float32), sample_rate=FE.sample_rate)
    return Dataset(ds.name, ds.recordings + (short,))


def _loaded(data: Dataset, rate: int, need: int) -> list[np.ndarray]:
    return [r.load(rate, min_samples=need, pad=True) for r in data]


def _evenly(n: int, cap: int | None) -> list[int]:
    """The selection extract_windows made on its own: all, or cap evenly spaced (linspace, rounded)."""
    if cap is None or n <= cap:
        return list(range(n))
    return np.linspace(0, n - 1, cap).round().astype(int).tolist()


def _ends_dropped(n: int, per: int) -> list[int]:
    """The selection export's sampler made in two stages: per + 2 evenly spaced, then per of those without ends."""
    first = np.array(_evenly(n, per + 2))
    if first.size <= per:
        return first.tolist()
    return first[np.unique(np.linspace(0, first.size - 1, per + 2)[1:-1].round().astype(int))].tolist()


def test_choose_windows_keeps_all_or_evenly_spaced():
    assert choose_windows(10, 3).tolist() == [0, 4, 9] and choose_windows(2, 3).tolist() == [0, 1]
    assert choose_windows(5).tolist() == [0, 1, 2, 3, 4] and choose_windows(5, 0).tolist() == []
    assert choose_windows(10, 3, skip_ends=True).tolist() == [2, 4, 7]  # of linspace(0, 9, 5): 0 2 4 7 9
    assert choose_windows(3, 2, skip_ends=True).tolist() == [1]  # one too many for 4 points: fewer than asked
    for n in range(0, 41):
        for cap in range(1, 9):
            assert choose_windows(n, cap).tolist() == _evenly(n, cap), (n, cap)
            assert choose_windows(n, cap, skip_ends=True).tolist() == _ends_dropped(n, cap), (n, cap)
            assert choose_windows(n, cap).dtype == np.int64


@pytest.mark.parametrize("cap", [None, 0, 1, 3, 1000])
def test_extract_windows_are_recording_windows_at_the_chosen_indices(data, cap):
    w = extract_windows(data, FE, WIN, LABELS, max_windows_per_recording=cap)
    logmel = LogMel(FE)
    xs, recs, idxs = [], [], []
    for i, samples in enumerate(_loaded(data, FE.sample_rate, WIN.window_samples(FE))):
        full = recording_windows(samples, FE, WIN, logmel)
        keep = _evenly(full.shape[0], cap)
        xs.append(full[keep])
        recs += [i] * len(keep)
        idxs += keep
    np.testing.assert_array_equal(w.x, np.concatenate(xs))
    assert w.recording.tolist() == recs and w.window_index.tolist() == idxs
    assert w.y.tolist() == [LABELS.index(data.recordings[r].label) for r in recs]
    assert w.keys() == [(data.recordings[r].record_id, k) for r, k in zip(recs, idxs)]
    assert len(w) == len(recs) and w.labels == LABELS and w.dataset is data and w.source == data.name
    if cap is None:
        assert w.n_recordings == len(data) and w.window_index[w.recording == len(data) - 1].tolist() == [0]


def test_audio_windows_are_the_samples_of_the_same_windows(data):
    rate, cap = 4000, 3
    need, hop = int(round(WIN.window_s * rate)), int(round(WIN.hop_s * rate))
    a = extract_audio_windows(data, rate, WIN, LABELS, max_windows_per_recording=cap)
    expected = []
    for samples in _loaded(data, rate, need):
        expected += [samples[k * hop:k * hop + need] for k in _evenly(1 + (samples.shape[0] - need) // hop, cap)]
    np.testing.assert_array_equal(a.x, np.stack(expected))
    assert a.x.dtype == np.float32 and a.x.shape[1] == need
    # keyed exactly like the log-mel windows of the same windowing: teacher and student outputs join on the keys
    assert a.keys() == extract_windows(data, FE, WIN, LABELS, max_windows_per_recording=cap).keys()
    assert len(extract_audio_windows(data, rate, WIN, max_windows_per_recording=0)) == 0


def test_sample_windows_are_model_inputs_without_recording_ends(data):
    from acula_edge.export.calibration import sample_windows, spread_recordings

    n, per = 9, 2
    s = sample_windows(data, FE, WIN, LABELS, n, per_recording=per, seed=1)
    chosen = spread_recordings(data, -(-n // per), 1)
    assert s.dataset.recordings == tuple(data.recordings[i] for i in chosen) and s.source == data.name
    assert s.x.shape[1:] == (1, WIN.frames_per_window(FE), FE.n_mels) and len(s) == n
    logmel, pool = LogMel(FE), []
    for r, samples in enumerate(_loaded(s.dataset, FE.sample_rate, WIN.window_samples(FE))):
        full = recording_windows(samples, FE, WIN, logmel)
        pool += [(r, k) for k in _ends_dropped(full.shape[0], per)]
        for j in np.flatnonzero(s.recording == r):
            np.testing.assert_array_equal(s.x[j, 0], full[s.window_index[j]])
    # the first n of the pool taken round-robin over recordings (a prefix stays spread), in recording order
    rank = {key: sum(1 for q in pool[:i] if q[0] == key[0]) for i, key in enumerate(pool)}
    expected = sorted(sorted(pool, key=lambda key: (rank[key], key[0]))[:n])
    assert list(zip(s.recording.tolist(), s.window_index.tolist())) == expected
    assert s.n_recordings == len({r for r, _ in expected})


def test_windows_take_concatenate_and_labels(data):
    w = extract_windows(data, FE, WIN, LABELS, max_windows_per_recording=2)
    part = w.take(np.flatnonzero(w.recording == 1))
    n1 = recording_windows(data.recordings[1].load(FE.sample_rate), FE, WIN).shape[0]
    assert n1 > 2 and part.recording.tolist() == [1, 1] and part.window_index.tolist() == [0, n1 - 1]
    assert part.dataset is data and part.record_ids.tolist() == [data.recordings[1].record_id] * 2
    both = Windows.concatenate([w, part])
    assert len(both) == len(w) + 2 and both.keys() == w.keys() + part.keys()
    with pytest.raises(ValueError, match="different labels"):
        Windows.concatenate([w, extract_windows(data, FE, WIN, ("abnormal", "normal"), max_windows_per_recording=1)])
    assert w.recording_labels().tolist() == [LABELS.index(r.label) for r in data]
    bare = Windows(w.x[:2], np.arange(2), np.zeros(2, np.int64), np.zeros(2, np.int64), LABELS, source="memory")
    assert bare.n_recordings == 2 and bare.source == "memory"
    with pytest.raises(ValueError, match="windows from memory carry no dataset"):
        bare.record_ids


def test_unreadable_recordings_are_reported_together():
    bad = Dataset("d", (Recording("a", "normal", path=Path("/nonexistent/a.wav")),
                        Recording("b", "normal", path=Path("/nonexistent/b.wav"))))
    with pytest.raises(DatasetError, match="d: 2 recording"):
        extract_windows(bad, FE, WIN)
    with pytest.raises(DatasetError, match="d: 2 recording"):
        extract_audio_windows(bad, 4000, WIN)
    with pytest.raises(DatasetError, match="the dataset has no recordings"):
        extract_windows(Dataset("empty", ()), FE, WIN)


def _device(probs: np.ndarray, ok: np.ndarray) -> np.ndarray:
    acc = RecordingAccumulator(LABELS, None, keep_windows=False)
    for k, (p, good) in enumerate(zip(probs, ok)):
        quality = WindowQuality(-20.0, 0.0, 0.0, 0.5, () if good else ("clipping",))
        acc.add(WindowEvent(index=k, start_s=float(k), end_s=k + 1.0, labels=LABELS, probabilities=p,
                            embedding=np.zeros(3, np.float32), quality=quality))
    return acc.result(duration_s=float(len(probs))).probabilities


@pytest.mark.parametrize("gate", [False, True])
def test_recording_scores_equal_the_device_mean_aggregation(gate):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(57, 2)) * 3
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    recording = np.sort(rng.integers(0, 7, 57))
    recording[recording == 5] = 9  # ids need not be contiguous
    ok = rng.random(57) > 0.4 if gate else np.ones(57, bool)
    ok[recording == 2] = False  # a recording without one good window falls back to all of them, as the device does
    ids, scores = recording_scores(probs, recording, ok if gate else None)
    assert ids.tolist() == sorted(set(recording.tolist())) and scores.dtype == np.float32
    for r, s in zip(ids, scores):
        rows = recording == r
        np.testing.assert_array_equal(s, _device(probs[rows], ok[rows] if gate else np.ones(rows.sum(), bool)))
    # one column (P(last label)), as the parity gate passes it, gives that column of the same scores
    np.testing.assert_array_equal(recording_scores(probs[:, -1], recording)[1],
                                  recording_scores(probs, recording)[1][:, -1])


def test_distill_scores_recordings_as_the_device(data, one_torch_thread):
    import torch

    from acula_edge.distill.metrics import softmax
    from acula_edge.distill.students import build_student
    from acula_edge.distill.train import predict, score_recordings
    from acula_edge.runtime.quality import QualityConfig, window_quality

    torch.manual_seed(0)
    model = build_student("tiny", 8, 2).eval()
    got = score_recordings(model, data, FE, WIN, LABELS)
    ws, hs = WIN.window_samples(FE), WIN.hop_samples(FE)
    for r, x in enumerate(_loaded(data, FE.sample_rate, ws)):
        windows = recording_windows(x, FE, WIN)
        probs = softmax(predict(model, windows)[1]).astype(np.float32)
        ok = [window_quality(x[k * hs:k * hs + ws], FE, QualityConfig()).ok for k in range(windows.shape[0])]
        np.testing.assert_array_equal(got[r], _device(probs, np.array(ok)))
