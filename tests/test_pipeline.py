"""The main job end to end on a tiny config: stages run in order, the report has one row per artifact, a re-run
resumes, a changed config is refused, and a failing stage is named."""

import dataclasses
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from acula_edge.errors import AculaEdgeError, ConfigError  # noqa: E402
from acula_edge.bench.report import fmt_threshold  # noqa: E402
from acula_edge.pipeline import Pipeline, PipelineConfig  # noqa: E402

TINY = PipelineConfig(data="synthetic:heart?n=16&seed=3", align_preset="tiny", align_epochs=1, students=("tiny",),
                      distill_epochs=1, max_windows_per_recording=2, targets=("onnx",), precisions=("fp32",),
                      latency_runs=5, latency_seconds=0.05)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    messages: list[str] = []
    report = Pipeline(TINY, out, echo=messages.append).run()
    return out, report, messages


def test_runs_every_stage_and_writes_the_report(finished_run):
    out, report, messages = finished_run
    state = json.loads((out / "pipeline.json").read_text())
    assert set(state["stages"]) == {"align", "distill", "export", "verify", "bench-latency", "bench-accuracy",
                                    "report"}
    assert all(stage["done"] for stage in state["stages"].values())
    text = report.read_text()
    assert "| teacher | PyTorch fp32 |" in text and "| student-tiny | PyTorch fp32 |" in text
    assert "bundles/tiny/onnx-fp32 | onnx fp32 |" in text
    assert "[subset=D]" in text  # the held-out site is named
    accuracy = json.loads((out / "accuracy.json").read_text())
    assert set(accuracy["checkpoints"]) == {"teacher", "teacher-probe", "student-tiny"}
    assert (out / "plots" / "roc.png").stat().st_size > 1000


def test_report_leads_with_the_decision_in_one_document(finished_run):
    out, report, _ = finished_run
    text = report.read_text()
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert [h for h in headings if h.startswith("# ")] == ["# acula-edge pipeline report"]
    assert headings[1] == "## The decision on the held-out group" and "## Benchmark detail" in headings
    assert "### Accuracy (recording level)" in headings and "### Decision (the answer the device gives)" in headings
    assert "| threshold | Se | Sp | MAcc | AUROC |" in text and "RTF (p50)" in text
    assert "teacher zero-shot:" in text and "teacher linear probe:" in text and "size: the teacher has" in text
    # the student's operating point, chosen by distill, is the one its bundle applies and the report shows
    student = json.loads((out / "students" / "tiny" / "config.json").read_text())["operating_point"]
    manifest = json.loads((out / "bundles" / "tiny" / "onnx-fp32" / "manifest.json").read_text())
    assert manifest["operating_point"] == student and manifest["threshold"] == student["threshold"]
    accuracy = json.loads((out / "accuracy.json").read_text())
    assert accuracy["bundles"][0]["threshold"] == student["threshold"]
    assert accuracy["checkpoints"]["student-tiny"]["operating_point"] == student
    assert f"| {fmt_threshold(student['threshold'])} |" in text


def test_rerun_resumes_without_redoing_stages(finished_run):
    out, _, _ = finished_run
    messages: list[str] = []
    Pipeline(TINY, out, echo=messages.append).run()
    assert sum("done earlier, skipped" in m for m in messages) == 7


def test_another_config_in_the_same_folder_is_refused(finished_run):
    out, _, _ = finished_run
    with pytest.raises(ConfigError, match=r"another configuration \(distill_epochs: 1 -> 2\); use another --out"):
        Pipeline(dataclasses.replace(TINY, distill_epochs=2), out).run()


def test_changing_only_the_threads_resumes(finished_run):
    out, _, _ = finished_run
    messages: list[str] = []
    Pipeline(dataclasses.replace(TINY, threads=3), out, echo=messages.append).run()
    assert sum("done earlier, skipped" in m for m in messages) == 7


def test_a_failing_stage_is_named_and_its_error_kept(tmp_path, monkeypatch):
    """An internal bug keeps its own type and traceback; a user error stays its own one-line type."""
    messages: list[str] = []
    pipeline = Pipeline(TINY, tmp_path, echo=messages.append)

    def broken() -> dict:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pipeline, "align", broken)
    with pytest.raises(RuntimeError, match="^disk on fire$") as bug:
        pipeline.run()
    assert not isinstance(bug.value, AculaEdgeError) and bug.traceback[-1].name == "broken"
    assert messages[-1].startswith("[1/7] align: failed; fix the cause and re-run the same command")

    def refused() -> dict:
        raise ConfigError("labels.csv: no column 'site'; add it")

    monkeypatch.setattr(pipeline, "align", refused)
    with pytest.raises(ConfigError, match="^labels.csv: no column 'site'; add it$"):
        pipeline.run()


def test_data_without_the_group_column_gets_a_clear_error(tmp_path):
    with pytest.raises(AculaEdgeError, match="no metadata column 'hospital'"):
        Pipeline(dataclasses.replace(TINY, group_by="hospital"), tmp_path)
