"""Report generation from metadata and audio; heart-rate and quality estimates; the LM generator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from acula_edge.align import reports as rep
from acula_edge.data import Dataset, Recording, load_dataset
from acula_edge.errors import ConfigError


def _beats(bpm: float, seconds: float = 10.0, rate: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.01 * rng.standard_normal(t.size)
    period = 60.0 / bpm
    for start in np.arange(0.1, seconds - 0.2, period):
        for offset, amp in ((0.0, 1.0), (0.3 * period, 0.6)):  # S1 and S2
            i = int((start + offset) * rate)
            n = int(0.05 * rate)
            x[i:i + n] += amp * np.sin(2 * np.pi * 60 * t[:n]) * np.hanning(n)
    return x.astype(np.float32)


@pytest.mark.parametrize("bpm", [55.0, 72.0, 110.0])
def test_heart_rate_from_envelope_autocorrelation(bpm):
    assert rep.estimate_heart_rate(_beats(bpm), 2000) == pytest.approx(bpm, rel=0.05)


def test_heart_rate_matches_synthetic_ground_truth():
    data = load_dataset("synthetic:heart?n=6&seed=3")
    for r in data:
        est = rep.estimate_heart_rate(r.load(2000), 2000)
        assert est == pytest.approx(float(r.metadata["heart_rate_bpm"]), rel=0.08)


def test_heart_rate_none_for_short_or_silent_audio():
    assert rep.estimate_heart_rate(np.zeros(2000, np.float32), 2000) is None
    assert rep.estimate_heart_rate(np.zeros(20000, np.float32), 2000) is None


def test_signal_quality_grades_clipping_as_poor():
    clean = _beats(70)
    assert rep.signal_quality(clean, 2000).grade == "good"
    clipped = np.clip(clean * 20, -1, 1)
    q = rep.signal_quality(clipped, 2000)
    assert q.clipping > 0.01 and q.grade == "poor"


def _dataset(meta: dict[str, str], label: str = "abnormal", name: str = "mydata") -> Dataset:
    rec = Recording("r1", label, meta, samples=_beats(80), sample_rate=2000)
    return Dataset(name, (rec,))


def test_template_report_uses_whatever_metadata_exists_and_is_deterministic():
    data = _dataset({"path": "x.wav", "record": "r1", "device": "Acme stethoscope", "age": "54", "sex": "F",
                     "murmur_grade": "III"})
    gen = rep.TemplateReportGenerator()
    r = data.recordings[0]
    text = gen(r, r.load(2000), 2000)
    assert text == gen(r, r.load(2000), 2000)
    assert text.startswith("Heart sound recording, 10 seconds long. Finding: abnormal heart sounds with a murmur.")
    for part in ("Recorded with a Acme stethoscope.", "Patient age 54.", "Sex: F.", "murmur grade: III.",
                 "Estimated heart rate 80 beats per minute.", "Signal quality is good"):
        assert part in text
    assert "x.wav" not in text and "r1" not in text


def test_dataset_template_is_chosen_by_dataset_name_not_by_code():
    data = _dataset({"subset": "b"}, name="/somewhere/physionet2016")
    template = rep.template_for(data.name)
    assert template.name == "physionet2016"
    r = data.recordings[0]
    text = rep.TemplateReportGenerator(template)(r, r.load(2000), 2000)
    assert "3M Littmann E4000" in text
    generic = rep.TemplateReportGenerator(rep.template_for("/elsewhere/other"))(r, r.load(2000), 2000)
    assert "Data subset b." in generic
    with pytest.raises(ConfigError, match="unknown report template 'nope'"):
        rep.template_for("x", name="nope")


def test_lung_reports_skip_heart_rate_and_phrase_labels():
    rec = Recording("l1", "wheeze", {}, samples=_beats(70), sample_rate=2000)
    text = rep.TemplateReportGenerator(rep.ReportTemplate(sound_type="lung"))(rec, rec.load(2000), 2000)
    assert "Finding: lung sounds with wheezes." in text and "heart rate" not in text


def test_generate_reports_writes_jsonl(tmp_path):
    data = load_dataset("synthetic:heart?n=3")
    out = tmp_path / "reports.jsonl"
    reports = rep.generate_reports(data, rep.TemplateReportGenerator(), 2000, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["record_id"] for r in rows] == [r.record_id for r in data]
    assert rows[0]["text"] == reports[0].text and rows[0]["generator"] == "template:generic"
    assert rep.read_reports(out) == reports


def test_label_prompts_are_built_from_label_names():
    texts, owners = rep.label_prompts(("normal", "abnormal"), "heart")
    assert texts[0] == "normal heart sounds" and "abnormal heart sounds with a murmur" in texts
    assert owners == ("normal", "normal", "abnormal", "abnormal")
    assert rep.label_phrase("stridor", "lung") == "stridor lung sounds"


def test_causal_lm_generator_is_deterministic(tmp_path):
    from acula_edge.align.tiny_models import build_tiny_causal_lm

    gen = rep.CausalLMReportGenerator(build_tiny_causal_lm(tmp_path / "gpt"), max_new_tokens=8)
    data = load_dataset("synthetic:heart?n=1")
    r = data.recordings[0]
    first = gen(r, r.load(2000), 2000)
    assert isinstance(first, str) and first and first == gen(r, r.load(2000), 2000)
    assert gen.name == "lm:gpt"
    with pytest.raises(ConfigError, match="no config.json"):
        rep.CausalLMReportGenerator(tmp_path)


@pytest.mark.shared_data
def test_physionet_reports_name_the_stethoscope_and_a_plausible_heart_rate(physionet_dir):
    data = load_dataset(physionet_dir)
    gen = rep.TemplateReportGenerator(rep.template_for(data.name))
    for r in data.where("subset", ["a", "b"]).recordings[::200]:
        samples = r.load(2000)
        text = gen(r, samples, 2000)
        assert ("Welch Allyn Meditron" in text) == (r.metadata["subset"] == "a")
        bpm = rep.estimate_heart_rate(samples, 2000)
        assert bpm is not None and 40 <= bpm <= 200
