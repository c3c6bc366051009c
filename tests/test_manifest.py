import dataclasses
import json

import pytest

from acula_edge.atomic import sha256_file
from acula_edge.errors import BundleError
from acula_edge.frontend import preset
from acula_edge.manifest import (DIGEST_FIELD, MAX_MANIFEST_BYTES, SCHEMA_VERSION, Manifest, Prompts, TensorSpec,
                                 manifest_bytes, read_bundle, read_manifest, seal, verify_model_file, write_manifest)


def make_manifest(tmp_path):
    fe, win = preset("heart")
    (tmp_path / "model.onnx").write_bytes(b"model-bytes" * 50)
    (tmp_path / "reference.npz").write_bytes(b"reference")
    return Manifest(target="onnx", precision="fp32", model_file="model.onnx",
                    model_sha256=sha256_file(tmp_path / "model.onnx"), frontend=fe, windowing=win,
                    inputs=(TensorSpec("logmel", (1, 1, 196, 32), "float32"),),
                    outputs=(TensorSpec("embedding", (1, 2), "float32"), TensorSpec("logits", (1, 2), "float32")),
                    labels=("normal", "abnormal"),
                    prompts=Prompts(texts=("a", "b"), embeddings=((1.0, 0.0), (0.0, 1.0)),
                                    labels=("normal", "abnormal")),
                    extra={"files": {"reference.npz": sha256_file(tmp_path / "reference.npz")},
                           "reference_file": "reference.npz"})


def written(tmp_path) -> tuple[Manifest, dict]:
    m = make_manifest(tmp_path)
    write_manifest(m, tmp_path)
    return m, json.loads((tmp_path / "manifest.json").read_text())


def forge(tmp_path, data: dict) -> None:
    """Write ``data`` as a consistently sealed manifest (only the schema can object)."""
    (tmp_path / "manifest.json").write_bytes(seal(data, tmp_path))


def test_round_trip_digest_and_checksum(tmp_path):
    m, data = written(tmp_path)
    back = read_manifest(tmp_path)
    assert back == dataclasses.replace(m, bundle_sha256=data[DIGEST_FIELD]) and len(back.bundle_sha256) == 64
    assert (tmp_path / "manifest.json").read_bytes() == manifest_bytes(data)
    contents = read_bundle(tmp_path)
    assert contents.model_bytes == (tmp_path / "model.onnx").read_bytes()
    assert contents.digest == back.bundle_sha256
    assert verify_model_file(back, tmp_path) == tmp_path / "model.onnx"


def test_every_byte_of_the_manifest_is_covered(tmp_path):
    """A flip of the lowest bit of every manifest byte is refused (whitespace included: the text must be canonical),
    and so is a flip of bit 1 or 5 (case) at every third byte; nothing but a BundleError escapes."""
    written(tmp_path)
    raw = (tmp_path / "manifest.json").read_bytes()
    for mask, step in ((0x01, 1), (0x02, 3), (0x20, 3)):
        for i in range(0, len(raw), step):
            b = bytearray(raw)
            b[i] ^= mask
            (tmp_path / "manifest.json").write_bytes(bytes(b))
            with pytest.raises(BundleError):
                read_bundle(tmp_path)
    (tmp_path / "manifest.json").write_bytes(raw)
    read_bundle(tmp_path)


def test_threshold_edit_is_detected_by_the_digest(tmp_path):
    _, data = written(tmp_path)
    text = (tmp_path / "manifest.json").read_text().replace('"threshold": 0.5', '"threshold": 0.4')
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match="bundle digest .* does not match the manifest's bundle_sha256"):
        read_manifest(tmp_path)
    compact = json.dumps(data)  # same content, other whitespace
    (tmp_path / "manifest.json").write_text(compact)
    with pytest.raises(BundleError, match="edited after export"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("name", ["model.onnx", "reference.npz"])
def test_every_listed_file_is_covered(tmp_path, name):
    written(tmp_path)
    data = (tmp_path / name).read_bytes()
    for i in range(0, len(data), 7):
        b = bytearray(data)
        b[i] ^= 0x01
        (tmp_path / name).write_bytes(bytes(b))
        with pytest.raises(BundleError, match=f"{name}: sha256 .* does not match the manifest"):
            read_bundle(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(BundleError, match=f"{name}: the file named in the manifest is missing"):
        read_bundle(tmp_path)


def test_newer_and_older_schemas_are_refused(tmp_path):
    _, data = written(tmp_path)
    forge(tmp_path, {**data, "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(BundleError, match="upgrade acula-edge"):
        read_manifest(tmp_path)
    forge(tmp_path, {**data, "schema_version": 1})
    with pytest.raises(BundleError, match="older acula-edge, without a digest over the whole bundle; re-export"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("content,message", [(None, "no manifest.json"), ("{", "not valid JSON"),
                                             ("[]", "JSON object"), ('{"schema_version": 2}', "missing"),
                                             ('{"target": "onnx"}', "schema_version"),
                                             ('{"schema_version": 2, "a": 1, "a": 2}', r"repeats the key\(s\) \['a'\]"),
                                             ("[" * 100_000 + "]" * 100_000, "nested deeper than 16 levels"),
                                             ('{"x": ' * 20 + "1" + "}" * 20, "nested deeper than 16 levels"),
                                             ('{"threshold": NaN}', "non-finite number NaN"),
                                             (b"\xff\xfe{}", "not UTF-8")])
def test_broken_manifests(tmp_path, content, message):
    if content is not None:
        path = tmp_path / "manifest.json"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(BundleError, match=message):
        read_manifest(tmp_path)


def test_oversized_manifest_is_refused_before_parsing(tmp_path):
    (tmp_path / "manifest.json").write_bytes(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(BundleError, match="larger than the 8,388,608-byte limit"):
        read_manifest(tmp_path)


def _set(data: dict, path: str, value) -> dict:
    d = json.loads(json.dumps(data))
    keys = path.split(".")
    node = d
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    node[int(keys[-1]) if isinstance(node, list) else keys[-1]] = value
    return d


# (field path, forged value, message fragment): each sealed consistently, so only the schema can refuse it.
BAD_VALUES = [
    ("threshold", -1, r"threshold must be in \(0.0, 1.0\), got -1.0"),
    ("threshold", 0.0, r"threshold must be in \(0.0, 1.0\)"),
    ("threshold", 1, r"threshold must be in \(0.0, 1.0\)"),
    ("threshold", "0.5", "threshold must be a finite number"),
    ("frontend.n_mels", 32.0, "frontend.n_mels must be an integer, got 32.0"),
    ("frontend.n_fft", 256.0, "frontend.n_fft must be an integer"),
    ("frontend.hop_length", 40.0, "frontend.hop_length must be an integer"),
    ("frontend.n_mels", 1_000_000, r"frontend.n_mels must be in 1..512"),
    ("frontend.sample_rate", True, "frontend.sample_rate must be an integer, got True"),
    ("frontend.window", "blackman", "window must be one of"),
    ("frontend.typo", 1, "unknown keys"),
    ("windowing.window_s", 1e9, r"windowing.window_s must be in \(0.0, 600.0\]"),
    ("windowing.hop_s", 0, r"windowing.hop_s must be in \(0.0"),
    ("labels", [], "labels must have 1..1000 entries, got 0"),
    ("labels", ["a", ""], r"labels\[1\] must be a non-empty string"),
    ("labels", ["a", "a"], "repeat a name"),
    ("model_file", "../model.onnx", "plain file name inside the bundle"),
    ("model_file", "/etc/hostname", "plain file name inside the bundle"),
    ("model_sha256", "abc", "model_sha256 must be a sha256"),
    ("extra.files", {"../../../../etc/hostname": "0" * 64}, "plain file name inside the bundle"),
    ("extra.reference_file", "/etc/hostname", "plain file name"),
    ("extra.arena_bytes", "abc", "extra.arena_bytes must be an integer"),
    ("extra.arena_bytes", -5, "extra.arena_bytes must be in 1.."),
    ("extra.arena_bytes", 1e12, "extra.arena_bytes must be an integer"),
    ("inputs.0.shape", [1, 1, 196, 0], r"inputs\[0\].shape\[3\] must be in 1.."),
    ("inputs.0.shape", [1, 1, 196, 40], r"input shape \(1, 1, 196, 40\) is not"),
    ("inputs.0.dtype", "int8", "is int8 but has no scale and zero_point"),
    ("outputs.1.shape", [1, 3], r"2 labels but the logits output has shape \(1, 3\)"),
    ("prompts.embeddings", [[1.0], [0.0, 1.0]], "rows have different lengths"),
    ("target", "coreml", "target 'coreml' not in"),
    ("surprise", 1, r"unknown keys \['surprise'\]"),
]


@pytest.mark.parametrize("path,value,message", BAD_VALUES, ids=[f"{p}={v!r}"[:40] for p, v, _ in BAD_VALUES])
def test_strict_schema_refuses_each_bad_value(tmp_path, path, value, message):
    _, data = written(tmp_path)
    bad = _set(data, path, value)
    if path.startswith(("extra.files", "model_file")):  # seal would read the named file: write unsealed
        (tmp_path / "manifest.json").write_bytes(manifest_bytes(bad))
    else:
        forge(tmp_path, bad)
    with pytest.raises(BundleError, match=message) as e:
        read_manifest(tmp_path)
    assert "\n" not in str(e.value)


def test_invalid_fields_are_listed_together(tmp_path):
    m = dataclasses.replace(make_manifest(tmp_path), target="coreml", precision="int4", model_file="../x")
    with pytest.raises(BundleError) as e:
        m.validate()
    assert "coreml" in str(e.value) and "int4" in str(e.value) and "plain file name" in str(e.value)


def test_a_fifo_or_folder_in_place_of_a_bundle_file_is_refused_without_blocking(tmp_path):
    import os

    written(tmp_path)
    (tmp_path / "reference.npz").unlink()
    os.mkfifo(tmp_path / "reference.npz")  # opening it for reading would block a plain open()
    with pytest.raises(BundleError, match="reference.npz: it is not a regular file"):
        read_bundle(tmp_path)
    (tmp_path / "reference.npz").unlink()
    (tmp_path / "reference.npz").mkdir()
    with pytest.raises(BundleError, match="reference.npz: (it is not a regular file|the manifest names a folder)"):
        read_bundle(tmp_path)
    os.rename(tmp_path / "manifest.json", tmp_path / "m")
    os.mkfifo(tmp_path / "manifest.json")
    with pytest.raises(BundleError, match="not a regular file"):
        read_bundle(tmp_path)
