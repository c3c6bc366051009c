"""Teachers: anything that gives an (embedding, logits) pair per window, and a disk cache of those outputs.

A teacher can be
- an acula-edge checkpoint folder (the align/ teacher, or any checkpoint): :class:`ModuleTeacher` via
  :func:`load_teacher`, with the checkpoint's own front-end, windowing, labels and prompts (a foundation-model
  teacher keeps its authors' preprocessing, e.g. the "opera" preset or a waveform front-end; the student then takes
  the device preset cutting the same windows);
- a Hugging Face transformers audio model saved in a local folder: :class:`HFAudioTeacher` (its own feature
  extractor on the window's audio when the folder has one, otherwise our log-mel windows as ``input_values``);
- any torch module with ``forward(x (B, 1, frames, n_mels)) -> (embedding, logits)`` or ``-> embedding``:
  :class:`ModuleTeacher`;
- a file of precomputed outputs (``.npz`` or ``.safetensors``): :class:`PrecomputedTeacher` — the usual split
  where the teacher runs once on GPUs and the student trains anywhere.

Outputs are keyed by (recording id, window index); see :class:`TeacherOutputs` for the file format, which is also
the cache format. :func:`teacher_outputs` caches them under a key made of the teacher's sha256, the data and the
front-end, so a teacher runs once per dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acula_edge import atomic
from acula_edge.checkpoint import CheckpointInfo, load_checkpoint, require_safetensors, weights_sha256
from acula_edge.data import Dataset
from acula_edge.errors import CheckpointError, ConfigError
from acula_edge.frontend import FrontendConfig, Windowing
from acula_edge.manifest import Prompts
from acula_edge.windows import extract_audio_windows, extract_windows

OUTPUT_SUFFIXES = (".npz", ".safetensors")


@dataclass
class TeacherOutputs:
    """Teacher outputs per window. File format (``.npz``, loaded with allow_pickle=False): arrays ``record_id``
    (unicode, N), ``window_index`` (int64, N), ``embedding`` (float32, N x D), optional ``logits`` (float32, N x C)
    and ``labels`` (unicode, C: the class of each logit column). ``.safetensors``: tensors ``window_index``,
    ``embedding``, optional ``logits``; the record ids and labels as JSON lists in the header metadata
    (``record_ids``, ``labels``)."""

    record_ids: np.ndarray  # (N,) str
    window_index: np.ndarray  # (N,) int64
    embedding: np.ndarray  # (N, D) float32
    logits: np.ndarray | None = None  # (N, C) float32
    labels: tuple[str, ...] = ()  # class of each logits column

    def __post_init__(self) -> None:
        n = len(self.record_ids)
        bad = [f"{name} has {len(a)} rows" for name, a in
               (("window_index", self.window_index), ("embedding", self.embedding), ("logits", self.logits))
               if a is not None and len(a) != n]
        if self.embedding.ndim != 2:
            bad.append(f"embedding must be 2-D (N, D), got shape {self.embedding.shape}")
        if self.logits is not None and self.logits.shape[1] != len(self.labels):
            bad.append(f"logits have {self.logits.shape[1]} columns but {len(self.labels)} labels are named")
        if bad:
            raise CheckpointError(f"teacher outputs for {n} windows are inconsistent: " + "; ".join(bad))

    @property
    def embedding_dim(self) -> int:
        return int(self.embedding.shape[1])

    def save(self, path: str | Path) -> Path:
        """Write atomically as .npz or .safetensors (by suffix)."""
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.numpy import save

            tensors = {"window_index": self.window_index.astype(np.int64),
                       "embedding": self.embedding.astype(np.float32)}
            if self.logits is not None:
                tensors["logits"] = self.logits.astype(np.float32)
            meta = {"record_ids": json.dumps([str(r) for r in self.record_ids]), "labels": json.dumps(self.labels)}
            atomic.write_bytes(path, save(tensors, metadata=meta))
        elif path.suffix == ".npz":
            arrays = {"record_id": np.asarray(self.record_ids, dtype=str), "window_index": self.window_index,
                      "embedding": self.embedding.astype(np.float32), "labels": np.asarray(self.labels, dtype=str)}
            if self.logits is not None:
                arrays["logits"] = self.logits.astype(np.float32)
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic.write_bytes(path, buf.getvalue())
        else:
            raise ConfigError(f"{path}: teacher outputs are saved as one of {OUTPUT_SUFFIXES}")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TeacherOutputs":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such teacher-outputs file")
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="numpy") as f:
                    meta = f.metadata() or {}
                    t = {k: f.get_tensor(k) for k in f.keys()}
                if "record_ids" not in meta:
                    raise CheckpointError(f"{path}: the safetensors header has no 'record_ids' metadata (a JSON list "
                                          f"of the recording id of every row)")
                return cls(np.asarray(json.loads(meta["record_ids"]), dtype=str),
                           t["window_index"].astype(np.int64), t["embedding"].astype(np.float32),
                           t["logits"].astype(np.float32) if "logits" in t else None,
                           tuple(json.loads(meta.get("labels", "[]"))))
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    return cls(z["record_id"].astype(str), z["window_index"].astype(np.int64),
                               z["embedding"].astype(np.float32),
                               z["logits"].astype(np.float32) if "logits" in z else None,
                               tuple(z["labels"].tolist()) if "labels" in z else ())
        except CheckpointError:
            raise
        except (KeyError, ValueError, OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable teacher-outputs file ({type(e).__name__}: {e}); expected "
                                  f"{TeacherOutputs.__doc__.split('File format')[1].strip()}") from e
        raise CheckpointError(f"{path}: teacher outputs must be one of {OUTPUT_SUFFIXES}, got {path.suffix!r}")

    def lookup(self, record_ids: np.ndarray, window_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row of each (record id, window index) key, and a mask of keys found (rows of missing keys are 0)."""
        table = {(r, int(w)): i for i, (r, w) in enumerate(zip(self.record_ids.tolist(), self.window_index.tolist()))}
        rows = np.array([table.get((r, int(w)), -1) for r, w in zip(record_ids.tolist(), window_index.tolist())],
                        dtype=np.int64)
        return np.maximum(rows, 0), rows >= 0


class Teacher:
    """Common surface of all teachers. ``frontend``/``windowing`` are None when the teacher does not fix them."""

    name: str = "teacher"
    identity: str = ""  # sha256 naming the teacher's weights (cache key and provenance)
    frontend: FrontendConfig | None = None
    windowing: Windowing | None = None
    labels: tuple[str, ...] = ()  # classes of the teacher's logits; () when it has no task head
    prompts: Prompts = Prompts()
    info: CheckpointInfo | None = None  # the checkpoint's config, when the teacher is an acula-edge checkpoint

    def compute(self, dataset: Dataset, frontend: FrontendConfig, windowing: Windowing,
                max_windows_per_recording: int | None = None, batch_size: int = 64) -> TeacherOutputs:
        raise NotImplementedError


def _tensor_sha256(state: dict[str, torch.Tensor], prefix: str) -> str:
    h = hashlib.sha256(prefix.encode())
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def _split_output(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


class ModuleTeacher(Teacher):
    """A torch module taking log-mel windows (B, 1, frames, n_mels) and returning (embedding, logits) or embedding."""

    def __init__(self, module: torch.nn.Module, frontend: FrontendConfig | None = None,
                 windowing: Windowing | None = None, labels: tuple[str, ...] = (), prompts: Prompts | None = None,
                 identity: str | None = None, name: str | None = None, info: CheckpointInfo | None = None) -> None:
        self.module = module.eval()
        self.frontend, self.windowing = frontend, windowing
        self.labels = tuple(labels)
        self.prompts = prompts or Prompts()
        self.identity = identity or _tensor_sha256(module.state_dict(), type(module).__qualname__)
        self.name = name or type(module).__name__
        self.info = info

    @classmethod
    def from_checkpoint(cls, folder: str | Path) -> "ModuleTeacher":
        model, info = load_checkpoint(folder)
        labels = info.labels if _has_head(model, info) else ()
        return cls(model, info.frontend, info.windowing, labels, info.prompts, weights_sha256(folder),
                   name=str(folder), info=info)

    def compute(self, dataset: Dataset, frontend: FrontendConfig, windowing: Windowing,
                max_windows_per_recording: int | None = None, batch_size: int = 64) -> TeacherOutputs:
        w = extract_windows(dataset, self.frontend or frontend, self.windowing or windowing,
                            max_windows_per_recording=max_windows_per_recording)
        embs, logits = [], []
        with torch.no_grad():
            for s in range(0, len(w), batch_size):
                e, lg = _split_output(self.module(torch.from_numpy(w.x[s:s + batch_size])[:, None]))
                embs.append(e.float().cpu().numpy())
                if lg is not None and self.labels:
                    logits.append(lg.float().cpu().numpy())
        return TeacherOutputs(w.record_ids, w.window_index, np.concatenate(embs),
                              np.concatenate(logits) if logits else None, self.labels if logits else ())


def _has_head(model: torch.nn.Module, info: CheckpointInfo) -> bool:
    """A checkpoint's logits are a task head when there is one column per label."""
    frames = info.windowing.frames_per_window(info.frontend)
    with torch.no_grad():
        _, logits = _split_output(model(torch.zeros(1, 1, frames, info.frontend.n_mels)))
    return logits is not None and logits.ndim == 2 and logits.shape[1] == len(info.labels) > 0


class HFAudioTeacher(Teacher):
    """A transformers audio model saved in a local folder (``save_pretrained``). The embedding is the model's
    ``pooler_output`` when it has one, else the time-mean of ``last_hidden_state``; logits are used when the model
    has a classification head (its ``id2label`` names them)."""

    def __init__(self, folder: str | Path, frontend: FrontendConfig | None = None,
                 windowing: Windowing | None = None) -> None:
        from acula_edge.errors import require

        transformers = require("transformers", "train", "A Hugging Face teacher")
        self.folder = Path(folder)
        cfg = transformers.AutoConfig.from_pretrained(self.folder, local_files_only=True)
        archs = getattr(cfg, "architectures", None) or []
        head = any("Classification" in a for a in archs)
        auto = transformers.AutoModelForAudioClassification if head else transformers.AutoModel
        require_safetensors(self.folder)
        try:
            self.model = auto.from_pretrained(self.folder, local_files_only=True, use_safetensors=True).eval()
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self.folder}: cannot load a transformers audio model ({e})") from e
        self.extractor = None
        if (self.folder / "preprocessor_config.json").is_file():
            self.extractor = transformers.AutoFeatureExtractor.from_pretrained(self.folder, local_files_only=True)
        self.frontend, self.windowing = frontend, windowing
        self.labels = tuple(cfg.id2label[i] for i in range(len(cfg.id2label))) if head else ()
        weights = sorted(p for p in self.folder.iterdir() if p.suffix in (".safetensors", ".bin"))
        h = hashlib.sha256()
        for p in [self.folder / "config.json", *weights]:
            h.update(atomic.sha256_file(p).encode())
        self.identity = h.hexdigest()
        self.name = str(self.folder)

    def compute(self, dataset: Dataset, frontend: FrontendConfig, windowing: Windowing,
                max_windows_per_recording: int | None = None, batch_size: int = 16) -> TeacherOutputs:
        windowing = self.windowing or windowing
        if self.extractor is not None:
            sr = int(self.extractor.sampling_rate)
            w = extract_audio_windows(dataset, sr, windowing, max_windows_per_recording=max_windows_per_recording)
        else:
            w = extract_windows(dataset, self.frontend or frontend, windowing,
                                max_windows_per_recording=max_windows_per_recording)
        embs, logits = [], []
        with torch.no_grad():
            for s in range(0, len(w), batch_size):
                chunk = w.x[s:s + batch_size]
                if self.extractor is not None:
                    inputs = self.extractor(list(chunk), sampling_rate=sr, return_tensors="pt")
                else:
                    inputs = {"input_values": torch.from_numpy(chunk)}
                try:
                    out = self.model(**inputs, output_hidden_states=True)
                except (RuntimeError, ValueError) as e:
                    raise ConfigError(f"{self.folder}: the model rejected inputs of shape "
                                      f"{tuple(next(iter(inputs.values())).shape)} ({e}); without a "
                                      f"preprocessor_config.json it gets log-mel windows (batch, frames, n_mels): "
                                      f"choose a front-end matching the model's input size") from e
                embs.append(_hf_embedding(out).float().numpy())
                if self.labels:
                    logits.append(out.logits.float().numpy())
        return TeacherOutputs(w.record_ids, w.window_index, np.concatenate(embs),
                              np.concatenate(logits) if logits else None, self.labels)


def _hf_embedding(out: Any) -> torch.Tensor:
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        hidden = out.hidden_states[-1]
    return hidden.mean(dim=1)


class PrecomputedTeacher(Teacher):
    """Outputs read from a file (see :class:`TeacherOutputs`); computes nothing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.outputs = TeacherOutputs.load(self.path)
        self.labels = self.outputs.labels if self.outputs.logits is not None else ()
        self.identity = atomic.sha256_file(self.path)
        self.name = str(self.path)

    def compute(self, dataset: Dataset, frontend: FrontendConfig, windowing: Windowing,
                max_windows_per_recording: int | None = None, batch_size: int = 64) -> TeacherOutputs:
        return self.outputs


def load_teacher(spec: str | Path | torch.nn.Module | None, frontend: FrontendConfig | None = None,
                 windowing: Windowing | None = None) -> Teacher | None:
    """A teacher from a spec: None or "none" (no teacher), a torch module, an acula-edge checkpoint folder, a
    transformers model folder, or a ``.npz``/``.safetensors`` file of precomputed outputs."""
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    if isinstance(spec, torch.nn.Module):
        return ModuleTeacher(spec, frontend, windowing)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix in OUTPUT_SUFFIXES:
        return PrecomputedTeacher(path)
    config = path / "config.json"
    if path.is_dir() and config.is_file():
        try:
            fmt = json.loads(config.read_text(encoding="utf-8")).get("format")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{config}: unreadable ({e})") from e
        if fmt == "acula-edge-checkpoint":
            return ModuleTeacher.from_checkpoint(path)
        return HFAudioTeacher(path, frontend, windowing)
    raise CheckpointError(f"teacher {str(spec)!r} is not usable: give 'none', an acula-edge checkpoint folder, a "
                          f"transformers model folder (config.json + weights), or a file of precomputed outputs "
                          f"({', '.join(OUTPUT_SUFFIXES)})")


def dataset_fingerprint(dataset: Dataset) -> str:
    """sha256 naming a dataset's recordings: ids, labels and the audio (file size and mtime, or in-memory bytes)."""
    h = hashlib.sha256()
    for r in dataset:
        h.update(f"{r.record_id}\0{r.label}\0".encode())
        if r.path is not None:
            st = Path(r.path).stat()
            h.update(f"{r.path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        elif r.samples is not None:
            h.update(f"{r.sample_rate}\0".encode())
            h.update(np.ascontiguousarray(r.samples).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """What teacher outputs depend on."""

    teacher: str
    data: str
    frontend: dict[str, Any] = field(default_factory=dict)
    windowing: dict[str, Any] = field(default_factory=dict)
    max_windows_per_recording: int | None = None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:32]


def teacher_outputs(teacher: Teacher, dataset: Dataset, frontend: FrontendConfig, windowing: Windowing,
                    max_windows_per_recording: int | None = None, cache_dir: str | Path | None = None,
                    batch_size: int = 64) -> tuple[TeacherOutputs, Path | None]:
    """The teacher's outputs on ``dataset`` (student front-end/windowing where the teacher fixes none), read from
    ``cache_dir`` when present, else computed and written there atomically. Returns (outputs, cache file or None)."""
    if isinstance(teacher, PrecomputedTeacher):
        return teacher.outputs, teacher.path
    fe, win = teacher.frontend or frontend, teacher.windowing or windowing
    key = CacheKey(teacher.identity, dataset_fingerprint(dataset), fe.to_dict(), win.to_dict(),
                   max_windows_per_recording)
    path = Path(cache_dir) / f"teacher-{key.digest()}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            return TeacherOutputs.load(path), path
        except CheckpointError:
            pass  # a corrupt cache entry is recomputed and overwritten
    out = teacher.compute(dataset, fe, win, max_windows_per_recording, batch_size)
    if path is not None:
        out.save(path)
    return out, path
