import json

import pytest

from acula_edge.atomic import sha256_file
from acula_edge.errors import BundleError
from acula_edge.frontend import preset
from acula_edge.manifest import (SCHEMA_VERSION, Manifest, Prompts, TensorSpec, read_manifest, verify_model_file,
                                 write_manifest)


def make_manifest(tmp_path):
    fe, win = preset("heart")
    (tmp_path / "model.onnx").write_bytes(b"model-bytes")
    return Manifest(target="onnx", precision="fp32", model_file="model.onnx",
                    model_sha256=sha256_file(tmp_path / "model.onnx"), frontend=fe, windowing=win,
                    inputs=(TensorSpec("logmel", (1, 1, 196, 32), "float32"),),
                    outputs=(TensorSpec("embedding", (1, 8), "float32"), TensorSpec("logits", (1, 2), "float32")),
                    labels=("normal", "abnormal"),
                    prompts=Prompts(texts=("a", "b"), embeddings=((1.0, 0.0), (0.0, 1.0)), labels=("normal", "abnormal")))


def test_round_trip_and_checksum(tmp_path):
    m = make_manifest(tmp_path)
    write_manifest(m, tmp_path)
    back = read_manifest(tmp_path)
    assert back == m
    assert verify_model_file(back, tmp_path) == tmp_path / "model.onnx"


def test_newer_schema_is_refused_with_upgrade_hint(tmp_path):
    write_manifest(make_manifest(tmp_path), tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="upgrade acula-edge"):
        read_manifest(tmp_path)


def test_tampered_model_file_is_detected(tmp_path):
    m = make_manifest(tmp_path)
    write_manifest(m, tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"model-bytez")
    with pytest.raises(BundleError, match="does not match the manifest"):
        verify_model_file(read_manifest(tmp_path), tmp_path)


@pytest.mark.parametrize("content,message", [(None, "no manifest.json"), ("{", "unreadable manifest"),
                                             ("[]", "JSON object"), ('{"schema_version": 1}', "malformed"),
                                             ('{"target": "onnx"}', "schema_version")])
def test_broken_manifests(tmp_path, content, message):
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(BundleError, match=message):
        read_manifest(tmp_path)


def test_invalid_fields_are_listed_together(tmp_path):
    from dataclasses import replace

    m = replace(make_manifest(tmp_path), target="coreml", precision="int4", model_file="../x")
    with pytest.raises(BundleError) as e:
        m.validate()
    assert "coreml" in str(e.value) and "int4" in str(e.value) and "plain file name" in str(e.value)
