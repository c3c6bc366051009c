"""PNG plots of benchmarks: ROC curves per class and a latency/accuracy scatter.

matplotlib is imported inside the functions (never at ``import acula_edge``) and used through its object API with
the Agg canvas, so plotting changes no global backend state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from acula_edge.errors import MissingDependencyError

STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v")


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingDependencyError("plots need matplotlib (pip install matplotlib), or leave out --plots") from e
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    from acula_edge import atomic

    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    atomic.write_bytes(path, buf.getvalue())
    return path


def roc_png(pred: Any, path: str | Path, title: str = "ROC") -> Path:
    """ROC curves of every reported entry of ``pred`` (:class:`~acula_edge.bench.accuracy.Predictions`: plain
    bundles and pooled leave-one-group-out folds), one panel per reported class, AUROC in the legend, and each
    entry's operating point (its own decisions: the shipped threshold, or argmax) marked on its curve with the Se
    and Sp there. Returns ``path``."""
    from acula_edge.bench.accuracy import class_targets, entries
    from acula_edge.bench.metrics import auroc, roc_curve
    from acula_edge.bench.report import short_names

    reported = entries(pred)
    names = short_names([bp.bundle for bp in reported])
    panels: dict[str, list[tuple[str, Any, Any, float, tuple[float, float]]]] = {}
    for name, bp in zip(names, reported):
        for cls, y, s, decided in class_targets(bp, pred.labels):
            if y.all() or not y.any():
                continue  # a single-class sample has no ROC curve
            fpr, tpr, _ = roc_curve(y, s)
            # the shipped operating point: where the bundle's own decisions fall on its curve
            point = (float((decided & ~y).sum() / (~y).sum()), float((decided & y).sum() / y.sum()))
            panels.setdefault(cls, []).append((name, fpr, tpr, auroc(y, s), point))
    n = max(len(panels), 1)
    fig = _figure(4.2 * n, 4.2)
    for k, (cls, curves) in enumerate(panels.items() or [("(no class has both outcomes)", [])]):
        ax = fig.add_subplot(1, n, k + 1)
        ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
        for j, (name, fpr, tpr, a, (x, y)) in enumerate(curves):  # dashes tell apart coinciding curves (fp32 twins)
            line, = ax.step(fpr, tpr, where="post", linewidth=1.5, linestyle=STYLES[j % len(STYLES)],
                            label=f"{name} (AUROC {a:.3f}; Se {y:.2f}, Sp {1 - x:.2f})")
            ax.plot([x], [y], marker=MARKERS[j % len(MARKERS)], markersize=8, color=line.get_color(),
                    markerfacecolor="none", markeredgewidth=1.5, linestyle="none", clip_on=False, zorder=5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false positive rate (1 - specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        ax.set_title((f"{title}: {cls} vs rest" if len(panels) > 1 else f"{title}: {cls}")
                     + "; markers: shipped operating points")
        if curves:
            ax.legend(loc="lower right", fontsize=7)
    return _save(fig, Path(path))


def scatter_png(accuracy: dict[str, Any], latency: dict[str, Any], path: str | Path,
                stage: str = "session") -> Path:
    """Pooled AUROC (with its 95 % interval) against the p50 latency per hop of ``stage``, one point per bundle
    present in both documents (matched by bundle path). Returns ``path``."""
    from acula_edge.bench.report import short_names

    lat = {str(Path(b["bundle"]).resolve()): b for b in latency["bundles"]}
    points = []
    for b in accuracy["bundles"]:
        lb = lat.get(str(Path(b["bundle"]).resolve()))
        if lb is None:
            continue
        cls, fig_ = next(iter(b["pooled"].items()))
        a = fig_["auroc"]
        if a["value"] is None:
            continue
        lo, hi = a["ci95"]
        points.append((b["bundle"], lb["stages_ms"][stage]["p50"], a["value"], lo, hi, lb["model_bytes"], cls))
    fig = _figure(5.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    names = short_names([p[0] for p in points]) if points else []
    for name, (_, x, y, lo, hi, size, cls) in zip(names, points):
        yerr = None if lo is None else [[y - lo], [hi - y]]
        ax.errorbar([x], [y], yerr=yerr, fmt="o", capsize=3, label=f"{name} ({size / 1024:.0f} KiB)")
    xs = [p[1] for p in points]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 10:  # log scale only where the latencies span decades
        ax.set_xscale("log")
    ax.set_xlabel(f"latency per hop, p50 ({stage}), ms")
    ax.set_ylabel(f"AUROC ({points[0][6]})" if points else "AUROC")
    ax.set_title("accuracy vs latency" if points else "accuracy vs latency: no bundle in both documents")
    if points:
        ax.legend(fontsize=7, loc="best")
    return _save(fig, Path(path))
