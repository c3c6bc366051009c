"""The main job: align -> distill -> export (every target, fp32 and int8) -> verify -> bench latency -> bench
accuracy -> report, resumable stage by stage.

Each stage writes its outputs under ``OUT`` and is then recorded in ``OUT/pipeline.json``; a re-run skips completed
stages (same config but for run-only fields: ``PipelineConfig.RUN_ONLY``) and resumes the first unfinished one. A
failed stage is named in the progress output and its error raised unchanged: a user error stays one line, a bug
keeps its traceback.

Held-out data: one whole group of the metadata column ``--group-by`` (default ``subset``) is held out for testing
(``--test-group``, default: the last group in sorted order) and never seen by align, distill or calibration. Data
without such a column gets a clear error: add a site or fold column to its labels.csv.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from acula_edge import atomic
from acula_edge import cli_options as options
from acula_edge.config import Config, changed_fields
from acula_edge.data import load_dataset, with_filter
from acula_edge.errors import AculaEdgeError, ConfigError
from acula_edge.manifest import TARGETS

STATE_NAME = "pipeline.json"


@dataclass(frozen=True)
class PipelineConfig(Config):
    """What the main job runs. Presets size it: "demo" (minutes on 2 CPU cores), "physionet2016" (real data)."""

    data: str = "synthetic:heart?n=160"  # dataset spec (acula_edge.data); 40 recordings per site
    group_by: str = "subset"  # metadata column whose groups are held out whole
    test_group: str | None = None  # the held-out group (None: last in sorted order)
    align_preset: str = "cpu-wide"  # acula_edge.align.train presets (cpu-wide: >= 10x the small student)
    align_epochs: int = 3
    normalisation: str = ""  # front-end normalisation of teacher and students ("" = the align preset's)
    students: tuple[str, ...] = ("small",)  # acula_edge.distill.students presets
    distill_epochs: int = 12
    max_windows_per_recording: int = 8  # training windows per recording (evenly spaced; 0 = all)
    targets: tuple[str, ...] = tuple(TARGETS)  # every registered export target
    precisions: tuple[str, ...] = ("fp32", "int8")
    latency_runs: int = 100
    latency_seconds: float = 1.0
    threads: int = 1  # latency-benchmark threads
    seed: int = 0

    RUN_ONLY = ("threads",)  # how the benchmarks run, not what the pipeline computes: never blocks a resume


PRESETS: dict[str, PipelineConfig] = {
    "demo": PipelineConfig(),
    # per_window_band: the cross-site ablation's pick (benchmarks/RESULTS_cross_site.md)
    "physionet2016": PipelineConfig(data="", test_group="b", align_preset="cpu", align_epochs=6,
                                    normalisation="per_window_band",
                                    students=("tiny", "small", "base"), distill_epochs=20,
                                    max_windows_per_recording=12, latency_runs=300, latency_seconds=3.0),
}


@dataclass
class Stage:
    name: str
    run: Callable[[], dict[str, Any]]  # returns what it produced (JSON-able), recorded in the state file


@dataclass
class PipelineState:
    path: Path
    fingerprint: str  # PipelineConfig.key(): run-only fields (threads) left out
    config: dict[str, Any]  # the fields hashed, kept so a refused re-run can name what changed
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, out: Path, config: PipelineConfig, restart: bool) -> "PipelineState":
        path = out / STATE_NAME
        if path.is_file() and not restart:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("fingerprint") != config.key():
                changes = changed_fields(data.get("config", {}), config.key_fields()) if "config" in data else []
                raise ConfigError(f"{path}: this folder holds a pipeline run with another configuration"
                                  f"{' (' + '; '.join(changes) + ')' if changes else ''}; use another --out, or "
                                  f"--restart to start this one over")
            return cls(path, config.key(), config.key_fields(), dict(data.get("stages", {})))
        return cls(path, config.key(), config.key_fields())

    def done(self, name: str) -> bool:
        return bool(self.stages.get(name, {}).get("done"))

    def record(self, name: str, outputs: dict[str, Any], seconds: float) -> None:
        self.stages[name] = {"done": True, "seconds": round(seconds, 2), "outputs": outputs}
        atomic.write_json(self.path, {"fingerprint": self.fingerprint, "config": self.config, "stages": self.stages})


class Pipeline:
    """Builds and runs the stages for one config and output folder."""

    def __init__(self, config: PipelineConfig, out: str | Path, echo: Callable[[str], None] = click.echo) -> None:
        self.cfg = config
        self.out = Path(out)
        self.echo = echo
        self.train_spec, self.test_spec = self._split()

    # -- data split ------------------------------------------------------------------------------------------
    def _split(self) -> tuple[str, str]:
        """(train spec, test spec): one whole group of ``group_by`` held out."""
        cfg = self.cfg
        dataset = load_dataset(cfg.data)
        if not cfg.group_by:
            raise ConfigError("the pipeline holds out a whole group for testing: give --group-by COLUMN")
        groups = sorted(set(dataset.group_values(cfg.group_by)))
        if len(groups) < 2:
            raise ConfigError(f"{cfg.data}: column {cfg.group_by!r} has one group only ({groups}); the pipeline "
                              f"needs two or more to hold one out (add a site or fold column to labels.csv)")
        test = cfg.test_group or groups[-1]
        if test not in groups:
            raise ConfigError(f"--test-group {test!r} is not a value of {cfg.group_by!r}: {groups}")
        return (with_filter(cfg.data, cfg.group_by, [test], keep=False),
                with_filter(cfg.data, cfg.group_by, [test], keep=True))

    # -- stages ----------------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        return [Stage("align", self.align), Stage("distill", self.distill), Stage("export", self.export),
                Stage("verify", self.verify), Stage("bench-latency", self.bench_latency),
                Stage("bench-accuracy", self.bench_accuracy), Stage("report", self.report)]

    def run(self, restart: bool = False) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        state = PipelineState.open(self.out, self.cfg, restart)
        self.state = state
        self.echo(f"pipeline: data {self.cfg.data!r}; train {self.train_spec!r}; test {self.test_spec!r}; "
                  f"out {self.out}")
        all_stages = self.stages()
        for i, stage in enumerate(all_stages, start=1):
            if state.done(stage.name):
                self.echo(f"[{i}/{len(all_stages)}] {stage.name}: done earlier, skipped")
                continue
            self.echo(f"[{i}/{len(all_stages)}] {stage.name} ...")
            t0 = time.perf_counter()
            try:
                outputs = stage.run()
            except Exception:
                # the error itself is re-raised unchanged: a user error stays one line of its own type, an internal
                # bug keeps its traceback; this line only says where it happened and how to go on
                self.echo(f"[{i}/{len(all_stages)}] {stage.name}: failed; fix the cause and re-run the same command "
                          f"(completed stages are kept)")
                raise
            state.record(stage.name, outputs, time.perf_counter() - t0)
            self.echo(f"[{i}/{len(all_stages)}] {stage.name}: done in {time.perf_counter() - t0:.1f} s")
        return self.out / "report.md"

    @property
    def teacher_dir(self) -> Path:
        return self.out / "align" / "teacher"

    def student_dir(self, size: str) -> Path:
        return self.out / "students" / size

    def bundle_root(self, size: str) -> Path:
        return self.out / "bundles" / size

    def bundles(self) -> list[Path]:
        found = []
        for size in self.cfg.students:
            for target in self.cfg.targets:
                for precision in self.cfg.precisions:
                    path = self.bundle_root(size) / f"{target}-{precision}"
                    if (path / "manifest.json").is_file():
                        found.append(path)
        return found

    def align(self) -> dict[str, Any]:
        from acula_edge.align.train import preset_config, train_alignment

        cfg = dataclasses.replace(preset_config(self.cfg.align_preset), epochs=self.cfg.align_epochs,
                                  seed=self.cfg.seed, max_windows_per_recording=self.cfg.max_windows_per_recording)
        if self.cfg.normalisation:
            cfg = dataclasses.replace(cfg, frontend_normalisation=self.cfg.normalisation)
        result = train_alignment(cfg, self.train_spec, self.out / "align", device="cpu")
        return {"teacher": str(result.teacher_dir), "steps": result.steps, "final_loss": result.final_loss}

    def distill(self) -> dict[str, Any]:
        from acula_edge.distill.train import TrainConfig, train_student

        outputs = {}
        for size in self.cfg.students:
            cfg = TrainConfig(student=size, epochs=self.cfg.distill_epochs, seed=self.cfg.seed,
                              max_windows_per_recording=self.cfg.max_windows_per_recording,
                              group_column=self.cfg.group_by)
            outputs[size] = str(train_student(cfg, self.teacher_dir, self.train_spec, self.student_dir(size)))
        return outputs

    def export(self) -> dict[str, Any]:
        """Every student to every target and precision. A bundle that fails its parity gate is not written; the
        failure is recorded (and shown in the report) and the other exports go on."""
        from acula_edge.export.api import export_targets
        from acula_edge.export.registry import get_target

        written: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for size in self.cfg.students:
            for precision, quantize in (("fp32", "none"), ("int8", "int8")):
                if precision not in self.cfg.precisions:
                    continue
                root = self.bundle_root(size)
                todo = [t for t in self.cfg.targets if precision in get_target(t).precisions  # tflm: int8 only
                        and not (root / f"{t}-{precision}" / "manifest.json").is_file()]  # resumed: done before
                if not todo:
                    continue
                manifests, refused = export_targets(self.student_dir(size), root, todo, quantize,
                                                    calib_data=self.train_spec, eval_data=self.test_spec,
                                                    progress=lambda line: self.echo(f"    {line}"))
                for path, manifest in manifests.items():
                    written[str(path)] = {"target": manifest.target, "precision": manifest.precision,
                                          "parity": manifest.parity}
                for path, error in refused.items():
                    failed[str(path)] = str(error)
        if not self.bundles():
            raise AculaEdgeError("no bundle passed its parity gate:\n  " + "\n  ".join(failed.values()))
        return {"bundles": written, "failed": failed}

    def verify(self) -> dict[str, Any]:
        from acula_edge.export.verify import verify_bundle

        for bundle in self.bundles():
            verify_bundle(bundle)
            self.echo(f"    verified {bundle}")
        return {"verified": [str(b) for b in self.bundles()]}

    def bench_latency(self) -> dict[str, Any]:
        from acula_edge.bench.latency import LatencyConfig, bench_latency

        doc = bench_latency(self.bundles(), LatencyConfig(threads=self.cfg.threads, runs=self.cfg.latency_runs,
                                                          min_seconds=self.cfg.latency_seconds), progress=self.echo)
        atomic.write_json(self.out / "latency.json", doc)
        return {"json": str(self.out / "latency.json")}

    def bench_accuracy(self) -> dict[str, Any]:
        from acula_edge.bench.accuracy import AccuracyConfig, bench_accuracy
        from acula_edge.bench.plots import roc_png, scatter_png

        doc, pred = bench_accuracy(self.bundles(), self.test_spec, AccuracyConfig(threads=self.cfg.threads),
                                   progress=self.echo)
        latency = json.loads((self.out / "latency.json").read_text(encoding="utf-8"))
        plots = {"ROC curves": roc_png(pred, self.out / "plots" / "roc.png"),
                 "accuracy vs latency": scatter_png(doc, latency, self.out / "plots" / "latency_accuracy.png")}
        doc["plots"] = {k: str(v.relative_to(self.out)) for k, v in plots.items()}
        doc["checkpoints"] = self._checkpoint_accuracy()
        atomic.write_json(self.out / "accuracy.json", doc)
        return {"json": str(self.out / "accuracy.json")}

    def _checkpoint_accuracy(self) -> dict[str, Any]:
        """Teacher and students in PyTorch on the held-out data: the reference the bundles are compared with."""
        from acula_edge.pipeline_eval import evaluate_checkpoint, evaluate_teacher_probe

        results = {"teacher": evaluate_checkpoint(self.teacher_dir, self.test_spec),
                   "teacher-probe": evaluate_teacher_probe(self.teacher_dir, self.train_spec, self.test_spec,
                                                           self.cfg.group_by, self.cfg.max_windows_per_recording,
                                                           self.cfg.seed)}
        for size in self.cfg.students:
            results[f"student-{size}"] = evaluate_checkpoint(self.student_dir(size), self.test_spec)
        return results

    def report(self) -> dict[str, Any]:
        from acula_edge.pipeline_report import write_report

        failed = self.state.stages.get("export", {}).get("outputs", {}).get("failed", {})
        path = write_report(self.out, self.cfg, self.train_spec, self.test_spec, failed)
        self.echo(f"report: {path}")
        return {"report": str(path)}


PIPELINE_LOG = "pipeline.log"  # third-party output of every stage, in the output folder


@click.command()
@click.option("--data", default=None, help="Dataset spec (default: the preset's; demo = synthetic:heart).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="demo", show_default=True,
              help="Pipeline preset: the data and settings of a known job (demo: the embedded synthetic heart "
                   "sounds).")
@click.option("--group-by", default=None,
              help=f"Metadata column whose groups are held out whole [default: {PRESETS['demo'].group_by}].")
@click.option("--test-group", default=None, help="The held-out group (default: last in sorted order).")
@click.option("--students", default=None,
              help="Comma-separated student sizes of acula_edge.distill.students (tiny, small, small-mcu, base) "
                   f"[default: {','.join(PRESETS['demo'].students)}].")
@click.option("--targets", default=None,
              help=f"Comma-separated export targets [default: {','.join(TARGETS)}].")
@options.threads("the latency benchmarks", default=PipelineConfig.threads)
@options.restart()
@options.verbose("OUT/pipeline.log")
def pipeline(data: str | None, out_dir: str, preset: str, group_by: str | None, test_group: str | None,
             students: str | None, targets: str | None, threads: int | None, restart: bool, verbose: bool) -> None:
    """Run align -> distill -> export -> verify -> bench -> report; resumable (re-run the same command).

    Prints one line per stage (and per bundle); library and converter output goes to OUT/pipeline.log."""
    cfg = PRESETS[preset]
    changes: dict[str, Any] = {}
    if data:
        changes["data"] = data
    if group_by:
        changes["group_by"] = group_by
    if test_group:
        changes["test_group"] = test_group
    if students:
        changes["students"] = tuple(s.strip() for s in students.split(",") if s.strip())
    if targets:
        changes["targets"] = tuple(s.strip() for s in targets.split(",") if s.strip())
    if threads:
        changes["threads"] = threads
    cfg = dataclasses.replace(cfg, **changes)
    if not cfg.data:
        raise ConfigError(f"preset {preset!r} needs --data (e.g. --data ../shared/data/physionet2016)")
    from acula_edge.quiet import captured

    with captured(Path(out_dir) / PIPELINE_LOG, verbose, what="pipeline") as console:
        report = Pipeline(cfg, out_dir, echo=console.line).run(restart=restart)
        if console.log_path is not None:
            console.line(f"library output: {console.log_path}")
    click.echo(f"done: {report}")
