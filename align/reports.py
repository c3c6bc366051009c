"""Clinical-style text reports generated from each recording's metadata and audio (the text side of AcuLa).

:class:`TemplateReportGenerator` is deterministic and generic: it writes a sentence for the label, the duration,
every metadata column the data has (site/subset, device, age, sex, ... — whatever exists), and two estimates
from the audio itself: the heart rate (autocorrelation of the amplitude envelope, :func:`estimate_heart_rate`) and
the signal quality (clipping and a peak-to-floor SNR proxy, :func:`signal_quality`). A dataset can add knowledge
its metadata only encodes as codes (e.g. which device each PhysioNet subset used) through a
:class:`ReportTemplate` registered in :data:`REPORT_TEMPLATES` under the dataset's folder name; the generator
itself never tests for a dataset.

:class:`CausalLMReportGenerator` rewrites the template report with a local causal language model (greedy
decoding: deterministic). :func:`generate_reports` runs a generator over a dataset and writes JSONL.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from acula_edge import atomic
from acula_edge.data import NEGATIVE_LABEL_NAMES, Dataset, Recording
from acula_edge.errors import ConfigError, require

# How a label reads in a report and in a zero-shot prompt ("{sound}" = body-sound type, e.g. "heart"). Labels not
# listed read "<label> {sound} sounds". Vocabulary of body sounds, not of any one dataset.
LABEL_PHRASES: Mapping[str, str] = MappingProxyType({
    **{name: "normal {sound} sounds" for name in NEGATIVE_LABEL_NAMES if name != "0"},
    "abnormal": "abnormal {sound} sounds with a murmur",
    "murmur": "{sound} sounds with a murmur",
    "crackle": "{sound} sounds with crackles",
    "crackles": "{sound} sounds with crackles",
    "wheeze": "{sound} sounds with wheezes",
    "wheezes": "{sound} sounds with wheezes",
    "unsure": "{sound} sounds of uncertain diagnosis",
})

# Sentences for metadata columns that many datasets share; other columns read "<column>: <value>."
COLUMN_SENTENCES: Mapping[str, str] = MappingProxyType({
    "site": "Recording site: {value}.",
    "subset": "Data subset {value}.",
    "device": "Recorded with a {value}.",
    "age": "Patient age {value}.",
    "age_group": "The patient is a {value}.",
    "sex": "Sex: {value}.",
    "gender": "Sex: {value}.",
    "location": "Auscultation location: {value}.",
})
# Columns that identify a file rather than describe it, or that the report states from the audio instead.
SKIP_COLUMNS = ("path", "record", "record_id", "sample_rate", "duration_s", "label")


def label_phrase(label: str, sound_type: str) -> str:
    """How ``label`` reads in text, e.g. ("abnormal", "heart") -> "abnormal heart sounds with a murmur"."""
    key = label.strip().lower()
    return LABEL_PHRASES.get(key, "{label} {sound} sounds").format(label=label, sound=sound_type)


@dataclass(frozen=True)
class ReportTemplate:
    """Dataset knowledge the metadata holds only as codes: value -> sentence, per column."""

    name: str = "generic"
    sound_type: str = "heart"  # body-sound type used in label phrases
    column_values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # column -> value -> sentence
    skip_columns: tuple[str, ...] = SKIP_COLUMNS


# PhysioNet/CinC Challenge 2016 training subsets: source database and stethoscope (Liu et al. 2016, Table 1).
_PHYSIONET2016_SUBSETS = {
    "a": "Recorded in the MIT heart sounds database with a Welch Allyn Meditron electronic stethoscope.",
    "b": "Recorded in the Aalborg University database with a 3M Littmann E4000 electronic stethoscope.",
    "c": "Recorded in the Aristotle University of Thessaloniki database with an AUDIOSCOPE stethoscope.",
    "d": "Recorded in the University of Haute Alsace database with a prototype Infral stethoscope.",
    "e": "Recorded in the Dalian University of Technology database with an MLT201 piezo sensor.",
    "f": "Recorded in the Shiraz University database with a JABES electronic stethoscope.",
}

# Dataset name (folder name of the dataset) -> template. Add an entry to describe a new dataset's codes.
REPORT_TEMPLATES: dict[str, ReportTemplate] = {
    "physionet2016": ReportTemplate(name="physionet2016", sound_type="heart",
                                    column_values={"subset": _PHYSIONET2016_SUBSETS}),
}


def template_for(dataset_name: str, sound_type: str = "heart", name: str = "auto") -> ReportTemplate:
    """The registered template for a dataset (``name="auto"``: looked up by the dataset's folder name), else the
    generic one; ``sound_type`` overrides the template's."""
    if name == "auto":
        key = Path(str(dataset_name).split("[")[0]).name.lower()
        template = REPORT_TEMPLATES.get(key, ReportTemplate())
    elif name == "generic":
        template = ReportTemplate()
    elif name in REPORT_TEMPLATES:
        template = REPORT_TEMPLATES[name]
    else:
        raise ConfigError(f"unknown report template {name!r}; choose 'auto', 'generic' or one of "
                          f"{sorted(REPORT_TEMPLATES)}")
    return dataclasses.replace(template, sound_type=sound_type)


def _envelope(samples: np.ndarray, sample_rate: int, env_rate: int = 50) -> np.ndarray:
    """Amplitude envelope at ``env_rate`` Hz: band-pass 25-400 Hz (heart-sound band), rectify, block-average."""
    from scipy import signal

    x = np.asarray(samples, dtype=np.float64)
    hi = min(400.0, 0.45 * sample_rate)
    if hi > 25.0:
        x = signal.sosfiltfilt(signal.butter(2, [25.0, hi], btype="band", fs=sample_rate, output="sos"), x)
    block = max(1, int(sample_rate // env_rate))
    n = len(x) // block
    return np.abs(x[:n * block]).reshape(n, block).mean(axis=1)


def estimate_heart_rate(samples: np.ndarray, sample_rate: int, bpm_range: tuple[float, float] = (40.0, 200.0)
                        ) -> float | None:
    """Heart rate in beats per minute from the autocorrelation of the amplitude envelope; None when the recording
    is shorter than 3 s or shows no periodicity.

    The largest autocorrelation peak within ``bpm_range`` is taken; when half that lag (twice the rate) also has a
    strong peak, the beat is the shorter lag (the S1-S2 interval cannot repeat at the longer lag alone).
    """
    env_rate = 50
    if len(samples) < 3 * sample_rate:
        return None
    env = _envelope(samples, sample_rate, env_rate)
    env = env - env.mean()
    if not np.any(env):
        return None
    ac = np.correlate(env, env, mode="full")[len(env) - 1:]
    ac = ac / ac[0]
    lo = int(env_rate * 60.0 / bpm_range[1])
    hi = min(len(ac) - 1, int(env_rate * 60.0 / bpm_range[0]))
    if hi <= lo + 1:
        return None
    lag = lo + int(np.argmax(ac[lo:hi + 1]))
    if ac[lag] <= 0.05:
        return None
    half = lag // 2
    if half >= lo:
        window = ac[max(lo, half - 2):half + 3]
        if window.size and window.max() > 0.6 * ac[lag]:
            lag = max(lo, half - 2) + int(np.argmax(window))
    # parabolic interpolation around the peak: sub-sample lag (the envelope is coarse, 20 ms)
    frac = 0.0
    if 0 < lag < len(ac) - 1:
        denom = ac[lag - 1] - 2.0 * ac[lag] + ac[lag + 1]
        if denom < 0:
            frac = float(np.clip(0.5 * (ac[lag - 1] - ac[lag + 1]) / denom, -0.5, 0.5))
    return 60.0 * env_rate / (lag + frac)


@dataclass(frozen=True)
class Quality:
    """Signal-quality estimate of one recording."""

    clipping: float  # fraction of samples within 1% of the peak magnitude (runs there = clipping)
    snr_db: float  # peak-to-floor ratio of the envelope: 20 log10(p95 / p10), dB
    grade: str  # "good", "fair" or "poor"


def signal_quality(samples: np.ndarray, sample_rate: int) -> Quality:
    """Clipping fraction and a peak-to-floor SNR proxy of the amplitude envelope, graded good/fair/poor."""
    x = np.asarray(samples, dtype=np.float64)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    clipping = float(np.mean(np.abs(x) >= 0.99 * peak)) if peak > 0 else 1.0
    env = _envelope(x, sample_rate) if x.size >= sample_rate else np.abs(x)
    p95, p10 = (np.percentile(env, [95, 10]) if env.size else (0.0, 0.0))
    snr = float(20.0 * np.log10((p95 + 1e-12) / (p10 + 1e-12)))
    if clipping > 0.01 or snr < 6.0:
        grade = "poor"
    elif clipping > 0.001 or snr < 12.0:
        grade = "fair"
    else:
        grade = "good"
    return Quality(clipping=clipping, snr_db=snr, grade=grade)


class ReportGenerator(Protocol):
    """Anything that turns a recording (and its samples) into a report."""

    name: str

    def __call__(self, recording: Recording, samples: np.ndarray, sample_rate: int) -> str: ...


class TemplateReportGenerator:
    """Deterministic template report; see the module docstring."""

    def __init__(self, template: ReportTemplate | None = None) -> None:
        self.template = template or ReportTemplate()
        self.name = f"template:{self.template.name}"

    def __call__(self, recording: Recording, samples: np.ndarray, sample_rate: int) -> str:
        t = self.template
        meta = recording.metadata
        sound = t.sound_type
        duration = len(samples) / float(sample_rate)
        parts = [f"{sound.capitalize()} sound recording, {duration:.0f} seconds long."]
        if recording.label:
            parts.append(f"Finding: {label_phrase(recording.label, sound)}.")
        for column in sorted(meta):
            value = str(meta[column]).strip()
            if column in t.skip_columns or not value:
                continue
            known = t.column_values.get(column, {})
            if value in known:
                parts.append(known[value])
            elif column in COLUMN_SENTENCES:
                parts.append(COLUMN_SENTENCES[column].format(value=value))
            else:
                parts.append(f"{column.replace('_', ' ')}: {value}.")
        if sound == "heart":
            bpm = estimate_heart_rate(samples, sample_rate)
            parts.append(f"Estimated heart rate {bpm:.0f} beats per minute." if bpm is not None
                         else "Heart rate could not be estimated.")
        q = signal_quality(samples, sample_rate)
        parts.append(f"Signal quality is {q.grade} (clipping {100 * q.clipping:.1f}%, SNR about {q.snr_db:.0f} dB).")
        return " ".join(parts)


class CausalLMReportGenerator:
    """Rewrites the template report with a local causal LM (greedy decoding, so deterministic).

    ``path``: a transformers model folder with a tokenizer (never downloaded). The output is the model's
    continuation of ``prompt.format(report=template_report)``; if the model produces no text, the template
    report is returned unchanged.
    """

    PROMPT = "Write a short clinical auscultation report.\nFacts: {report}\nReport:"

    def __init__(self, path: str | os.PathLike, template: ReportTemplate | None = None,
                 max_new_tokens: int = 48, prompt: str = PROMPT) -> None:
        transformers = require("transformers", "train", "The language-model report generator")
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(f"report LM {folder}: no config.json; give a local causal LM folder")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
        self.base = TemplateReportGenerator(template)
        self.max_new_tokens, self.prompt = max_new_tokens, prompt
        self.name = f"lm:{folder.name}"

    def __call__(self, recording: Recording, samples: np.ndarray, sample_rate: int) -> str:
        import torch

        facts = self.base(recording, samples, sample_rate)
        ids = self.tokenizer(self.prompt.format(report=facts), return_tensors="pt")
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        with torch.inference_mode():
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=pad)
        text = self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        return text or facts


@dataclass(frozen=True)
class Report:
    record_id: str
    label: str | None
    text: str
    generator: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def generate_reports(dataset: Dataset, generator: ReportGenerator, sample_rate: int,
                     out_jsonl: str | os.PathLike | None = None) -> list[Report]:
    """One report per recording (audio loaded at ``sample_rate`` Hz); written atomically as JSONL if asked."""
    reports = []
    for rec in dataset:
        samples = rec.load(sample_rate)
        reports.append(Report(rec.record_id, rec.label, generator(rec, samples, sample_rate), generator.name))
    if out_jsonl is not None:
        atomic.write_text(out_jsonl, "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in reports))
    return reports


def read_reports(path: str | os.PathLike) -> list[Report]:
    """Reports from a JSONL file written by :func:`generate_reports`."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [Report(**json.loads(line)) for line in lines if line.strip()]


def label_prompts(labels: Sequence[str], sound_type: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Zero-shot prompts and the label each stands for: the label phrase, and the report's "Finding" sentence
    (the form the audio was aligned to)."""
    texts, owners = [], []
    for label in labels:
        phrase = label_phrase(label, sound_type)
        for text in (phrase, f"Finding: {phrase}."):
            texts.append(text)
            owners.append(label)
    return tuple(texts), tuple(owners)
