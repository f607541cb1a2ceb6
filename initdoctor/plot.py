"""``--plot FILE.png``: the He et al. (2015) figure for your model (matplotlib, optional extra).

Top panel (with a probe): measured ``Var[y_l]`` against depth on a log axis — flat for a healthy
net, a straight falling line for one whose layers each lose a constant factor. Bottom panel: each
layer's static ``std_ratio`` (weight std / Kaiming std) with the warn band; flagged layers in red.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .errors import InitDoctorError, InputError
from .fileio import atomic_write
from .report import Report

_COLOURS = {"ok": "#2a9d8f", "warn": "#e9c46a", "error": "#e63946", "skip": "#adb5bd"}


def plot_report(report: Report, path: Path, size: tuple[float, float] = (8.0, 6.0), dpi: int = 100) -> Path:
    """Write the figure to ``path`` atomically (temp file in the same folder, then ``os.replace``)."""
    plt = _pyplot("--plot")
    folder = path.resolve().parent
    if not folder.is_dir():
        raise InputError(f"{path}: folder {folder} does not exist")
    fig = _figure(plt, report, size, dpi)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    finally:
        plt.close(fig)
    return path


def png_bytes(report: Report, size: tuple[float, float] = (8.0, 6.0), dpi: int = 100) -> bytes:
    """The same figure as PNG bytes (``--format html`` embeds them); InitDoctorError without matplotlib."""
    import io

    plt = _pyplot("the HTML report's plot")
    fig = _figure(plt, report, size, dpi)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _pyplot(what: str) -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InitDoctorError(f"{what} needs matplotlib: pip install 'initdoctor[plot]'") from None
    return plt


def _figure(plt: Any, report: Report, size: tuple[float, float], dpi: int) -> Any:
    layers = [f for f in report.layers if f.role != "embedding"]
    measured = [f for f in layers if f.activation_var is not None and f.activation_var > 0]
    panels = 2 if measured else 1
    fig, grid = plt.subplots(panels, 1, figsize=size, dpi=dpi, squeeze=False)
    axes = [row[0] for row in grid]
    names = [f.name for f in layers]
    if measured:
        ax = axes[0]
        xs = [names.index(f.name) for f in measured]
        ax.semilogy(
            xs, [f.activation_var for f in measured], "-", color="#264653", lw=1.5, label="measured Var[y]"
        )
        ax.scatter(
            xs, [f.activation_var for f in measured], c=[_COLOURS[f.status] for f in measured], zorder=3, s=18
        )
        first = measured[0].activation_var
        ax.axhline(first, color="#888", ls="--", lw=1, label="Var[y] of the first layer (Kaiming: flat)")
        ax.set_ylabel("activation variance (log)")
        ratio = report.summary.depth_ratio
        title = f"signal across depth: last/first = {ratio:.3g}" if ratio else "signal across depth"
        ax.set_title(title)
        ax.legend(loc="best", fontsize=8)
    ax = axes[-1]
    ratios = [f.std_ratio if f.std_ratio is not None and math.isfinite(f.std_ratio) else 0.0 for f in layers]
    ax.bar(range(len(layers)), ratios, color=[_COLOURS[f.status] for f in layers])
    warn = math.sqrt(float(report.settings.get("warn_threshold", 1.25)))
    ax.axhline(1.0, color="#264653", lw=1)
    ax.axhspan(1 / warn, warn, color="#2a9d8f", alpha=0.12, label="ok band (std)")
    ax.set_ylabel("weight std / Kaiming std")
    ax.set_xlabel("layer (execution order)")
    step = max(1, len(names) // 20)
    ax.set_xticks(
        range(0, len(names), step), [names[i] for i in range(0, len(names), step)], rotation=60, fontsize=7
    )
    ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"initdoctor · {Path(str(report.model['path'])).name} · {report.summary.status}")
    fig.tight_layout()
    return fig
