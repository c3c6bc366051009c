"""The bundle manifest: one versioned schema, written by acula_edge.export and read by the device runtime.

A bundle is a folder holding one model file and ``manifest.json``. The model's single input is one window of
log-mel frames, shape given by ``inputs[0].shape`` (NCHW: (1, 1, frames, n_mels)); its outputs are named
``embedding`` (text-aligned space, shape (1, D)) and ``logits`` (shape (1, len(labels)); softmax gives class
probabilities). Quantized tensors carry ``scale`` and ``zero_point`` (real = scale * (q - zero_point)).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acula_edge import atomic
from acula_edge.errors import BundleError
from acula_edge.frontend import FrontendConfig, Windowing

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
TARGETS = ("executorch", "onnx", "tflite", "tflm")
PRECISIONS = ("fp32", "int8")
DTYPES = ("float32", "int8", "uint8", "int16", "int32")
# Which pip extra provides the runtime for each target (named in "not installed" errors).
RUNTIME_EXTRA = {"executorch": "executorch", "onnx": "onnx", "tflite": "tflite", "tflm": "export"}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # one of DTYPES
    scale: float | None = None  # quantization scale, for integer tensors
    zero_point: int | None = None  # quantization zero point, for integer tensors

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorSpec":
        return cls(name=str(d["name"]), shape=tuple(int(s) for s in d["shape"]), dtype=str(d["dtype"]),
                   scale=None if d.get("scale") is None else float(d["scale"]),
                   zero_point=None if d.get("zero_point") is None else int(d["zero_point"]))


@dataclass(frozen=True)
class Prompts:
    """Text prompts and their embeddings in the model's shared space, for zero-shot scoring on the device."""

    texts: tuple[str, ...] = ()
    embeddings: tuple[tuple[float, ...], ...] = ()  # one row per text, same dim as the "embedding" output
    labels: tuple[str, ...] = ()  # the class each prompt stands for ("" if none)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Prompts":
        texts = tuple(d.get("texts", ()))
        return cls(texts=texts, embeddings=tuple(tuple(float(v) for v in row) for row in d.get("embeddings", ())),
                   labels=tuple(d.get("labels", ("",) * len(texts))))


@dataclass(frozen=True)
class Manifest:
    """Everything the device needs to run a bundle; see the module docstring for tensor conventions."""

    target: str  # one of TARGETS
    precision: str  # one of PRECISIONS
    model_file: str  # file name inside the bundle folder
    model_sha256: str
    frontend: FrontendConfig
    windowing: Windowing
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...]
    threshold: float = 0.5  # decision threshold on the probability of the last label (binary tasks)
    prompts: Prompts = field(default_factory=Prompts)
    parity: dict[str, Any] = field(default_factory=dict)  # the export-time parity report
    source_checkpoint_sha256: str = ""
    versions: dict[str, str] = field(default_factory=dict)  # torch, converter and runtime versions at export
    extra: dict[str, Any] = field(default_factory=dict)  # target specific (e.g. TFLM arena bytes, delegation)
    schema_version: int = SCHEMA_VERSION

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise BundleError(f"the manifest has no output {name!r}; outputs: {[o.name for o in self.outputs]}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["frontend"] = self.frontend.to_dict()
        d["windowing"] = self.windowing.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> "Manifest":
        version = d.get("schema_version")
        if not isinstance(version, int):
            raise BundleError(f"{source}: no integer schema_version; this is not an acula-edge manifest")
        if version > SCHEMA_VERSION:
            raise BundleError(f"{source}: schema version {version} is newer than this acula-edge reads "
                              f"({SCHEMA_VERSION}); upgrade acula-edge to load this bundle")
        try:
            m = cls(
                target=str(d["target"]), precision=str(d["precision"]), model_file=str(d["model_file"]),
                model_sha256=str(d["model_sha256"]), frontend=FrontendConfig.from_dict(d["frontend"]),
                windowing=Windowing.from_dict(d["windowing"]),
                inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
                labels=tuple(str(x) for x in d["labels"]), threshold=float(d.get("threshold", 0.5)),
                prompts=Prompts.from_dict(d.get("prompts") or {}), parity=dict(d.get("parity") or {}),
                source_checkpoint_sha256=str(d.get("source_checkpoint_sha256", "")),
                versions={str(k): str(v) for k, v in (d.get("versions") or {}).items()},
                extra=dict(d.get("extra") or {}), schema_version=version)
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{source}: malformed manifest ({type(e).__name__}: {e})") from e
        m.validate(source)
        return m

    def validate(self, source: str = "manifest") -> None:
        problems = []
        if self.target not in TARGETS:
            problems.append(f"target {self.target!r} not in {TARGETS}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} not in {PRECISIONS}")
        if Path(self.model_file).name != self.model_file:
            problems.append(f"model_file {self.model_file!r} must be a plain file name inside the bundle")
        for t in (*self.inputs, *self.outputs):
            if t.dtype not in DTYPES:
                problems.append(f"tensor {t.name!r} dtype {t.dtype!r} not in {DTYPES}")
        if len(self.inputs) != 1:
            problems.append(f"expected exactly one input, found {len(self.inputs)}")
        names = {o.name for o in self.outputs}
        if not {"embedding", "logits"} <= names:
            problems.append(f"outputs must include 'embedding' and 'logits', found {sorted(names)}")
        if problems:
            raise BundleError(f"{source}: invalid manifest: " + "; ".join(problems))


def write_manifest(manifest: Manifest, bundle_dir: str | Path) -> Path:
    manifest.validate()
    path = Path(bundle_dir) / MANIFEST_NAME
    atomic.write_json(path, manifest.to_dict())
    return path


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Read and validate ``bundle_dir/manifest.json`` (schema only; see verify_model_file for the checksum)."""
    bundle = Path(bundle_dir)
    path = bundle / MANIFEST_NAME
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: no such bundle folder")
    if not path.is_file():
        raise BundleError(f"{bundle}: no {MANIFEST_NAME}; this folder is not an exported bundle "
                          f"(create one with 'acula-edge export')")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: unreadable manifest ({e})") from e
    if not isinstance(data, dict):
        raise BundleError(f"{path}: the manifest must be a JSON object")
    return Manifest.from_dict(data, str(path))


def verify_model_file(manifest: Manifest, bundle_dir: str | Path) -> Path:
    """Path of the model file after checking it exists and its sha256 matches the manifest."""
    path = Path(bundle_dir) / manifest.model_file
    if not path.is_file():
        raise BundleError(f"{path}: the model file named in the manifest is missing")
    digest = atomic.sha256_file(path)
    if digest != manifest.model_sha256:
        raise BundleError(f"{path}: sha256 {digest[:12]}... does not match the manifest ({manifest.model_sha256[:12]}"
                          f"...): the file is corrupt or was replaced; re-export the bundle")
    return path
