"""Pictures for people who would rather look than read: the training curves and the
per-category confusion, as matplotlib figures drawn off-screen (the Agg canvas, no
display, no pyplot state), then PNG bytes or a base64 data URI for self-contained HTML.

matplotlib is imported inside the functions: importing this module costs nothing, so the
CLI and the pipeline compiler stay light.
"""
from __future__ import annotations

import base64
import io
import math
from typing import Iterable, Sequence

TRAINING_CURVES_FILE = "training_curves.png"
CONFUSIONS_FILE = "category_confusions.png"
RELIABILITY_FILE = "reliability.png"

_LOSS, _MICRO, _MACRO, _BEST = "#1f77b4", "#2ca02c", "#d62728", "#7f7f7f"


def _figure(width: float, height: float):
    """A figure on the Agg canvas: renders without a display and touches no global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def best_epoch_of(history: Sequence[dict]) -> int | None:
    """The epoch train keeps: the first one with the highest validation macro-F1."""
    if not history:
        return None
    best = history[0]
    for record in history[1:]:
        if record["val_macro_f1"] > best["val_macro_f1"]:
            best = record
    return best["epoch"]


def _epoch_axis(ax, epochs: list[int]) -> None:
    """Whole epochs on the x axis; a lone epoch sits in the middle."""
    if len(epochs) <= 20:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)


def training_curves(history: Sequence[dict], losses: Iterable[tuple[int, float]] | None = None,
                    best_epoch: int | None = None):
    """Two panels: the train loss, and validation micro/macro-F1 per epoch, best epoch marked.

    history: train's per-epoch records (epoch, step, train_loss, val_micro_f1, val_macro_f1).
    losses: (optimizer step, running loss) pairs as logged during training; with them the
    loss panel runs over steps (epoch ends dotted), without them it shows each epoch's
    mean loss. best_epoch: defaults to the first epoch with the highest macro-F1.
    """
    history = sorted(history, key=lambda r: r["epoch"])
    losses = sorted((int(s), float(v)) for s, v in (losses or ()))
    best = best_epoch if best_epoch is not None else best_epoch_of(history)
    figure = _figure(10, 3.8)
    loss_ax, f1_ax = figure.subplots(1, 2)

    if losses:
        loss_ax.plot([s for s, _ in losses], [v for _, v in losses], color=_LOSS,
                     marker="." if len(losses) < 40 else None, label="train loss (running mean of the epoch)")
        for record in history:
            loss_ax.axvline(record["step"], color=_BEST, linestyle=":", linewidth=0.8)
        loss_ax.set_xlabel("optimizer step (dotted: end of an epoch)")
    elif history:
        loss_ax.plot([r["epoch"] for r in history], [r["train_loss"] for r in history], color=_LOSS, marker="o",
                     label="train loss (epoch mean)")
        loss_ax.set_xlabel("epoch")
        _epoch_axis(loss_ax, [r["epoch"] for r in history])
    loss_ax.set_ylabel("BCE loss")
    loss_ax.set_title("Training loss")

    if history:
        epochs = [r["epoch"] for r in history]
        f1_ax.plot(epochs, [r["val_micro_f1"] for r in history], color=_MICRO, marker="o", label="micro-F1")
        f1_ax.plot(epochs, [r["val_macro_f1"] for r in history], color=_MACRO, marker="o", label="macro-F1")
        chosen = next((r for r in history if r["epoch"] == best), None)
        if chosen is not None:
            f1_ax.axvline(best, color=_BEST, linestyle="--", linewidth=1)
            f1_ax.plot([best], [chosen["val_macro_f1"]], marker="*", markersize=16, color=_MACRO, linestyle="none",
                       label=f"best epoch {best}: macro-F1 {chosen['val_macro_f1']:.1f}")
        _epoch_axis(f1_ax, epochs)
        low = min(min(r["val_micro_f1"], r["val_macro_f1"]) for r in history)
        f1_ax.set_ylim(max(0.0, low - 10), 100)
    else:
        f1_ax.text(0.5, 0.5, "no validation recorded", ha="center", va="center", transform=f1_ax.transAxes)
    f1_ax.set_xlabel("epoch")
    f1_ax.set_ylabel("F1 (%)")
    f1_ax.set_title("Validation (LexGLUE 8+1)")
    for ax in (loss_ax, f1_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    return figure


def f1_from_counts(counts: dict) -> float:
    """F1 in % from tp/fp/fn; 0 when the category is neither present nor predicted
    (sklearn's zero_division=0, as the LexGLUE score counts it)."""
    denominator = 2 * counts["tp"] + counts["fp"] + counts["fn"]
    return 100.0 * 2 * counts["tp"] / denominator if denominator else 0.0


def category_confusions(confusion: dict, columns: int = 4):
    """One 2x2 matrix per category, in a grid: gold (rows) by predicted (columns), the
    category first; each cell shows its count and is shaded by its share of the gold row
    (row 1: recall and misses, row 2: false alarms and correct rejections); each title
    carries the category's F1.

    confusion: {category: {"tp", "fp", "fn", "tn"}}, as evaluate() returns it.
    """
    import numpy as np

    names = list(confusion)
    rows = max(1, math.ceil(len(names) / columns))
    figure = _figure(3.0 * columns, 2.9 * rows + 0.4)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(names):]:
        figure.delaxes(ax)
    image = None
    for ax, name in zip(axes, names):
        c = confusion[name]
        counts = np.array([[c["tp"], c["fn"]], [c["fp"], c["tn"]]], dtype=float)
        totals = counts.sum(axis=1, keepdims=True)
        shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        for (i, j), count in np.ndenumerate(counts):
            ax.text(j, i, f"{int(count)}\n{shares[i, j]:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if shares[i, j] > 0.55 else "black")
        ax.set_xticks([0, 1], ["yes", "no"])
        ax.set_yticks([0, 1], ["yes", "no"])
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("gold", fontsize=8)
        ax.tick_params(labelsize=8, length=0)
        ax.set_title(f"{name}\nF1 {f1_from_counts(c):.1f}", fontsize=9)
    if image is not None:
        figure.colorbar(image, ax=list(axes[:len(names)]), shrink=0.6, label="share of the gold row")
    figure.suptitle("Per-category confusion on the test split (multi-label: each category on its own)")
    return figure


def reliability(calibration: dict):
    """The reliability diagram before and after calibration: per score bin, the mean score
    against the share of gold positives (every clause-category pair pooled), the diagonal
    where they agree; each point's area grows with the log of its bin's count.

    calibration: evaluate()'s `calibration` entry ({"before": ..., "after": ...}, each with
    its `ece` and reliability `table`).
    """
    import numpy as np

    figure = _figure(5.2, 4.6)
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color=_BEST, linestyle=":", linewidth=1, label="perfect calibration")
    for key, color, label in (("before", _LOSS, "raw scores"), ("after", _MACRO, "calibrated")):
        table = calibration[key]["table"]
        x = [row["mean_score"] for row in table]
        y = [row["positive_share"] for row in table]
        size = [12 * (1 + np.log10(row["count"])) for row in table]
        ax.plot(x, y, color=color, linewidth=1.2, alpha=0.8)
        ax.scatter(x, y, s=size, color=color, label=f"{label} (ECE {calibration[key]['ece']:.2f})", zorder=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean score in the bin")
    ax.set_ylabel("share of gold positives in the bin")
    ax.set_title("Reliability on the test split (calibration fit on validation)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return figure


def png_bytes(figure, dpi: int = 110) -> bytes:
    """The figure as a PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """A PNG as a data: URI, for an <img> that needs no other file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img_tag(png: bytes, alt: str) -> str:
    """A self-contained <img> element holding the PNG."""
    from html import escape

    return f'<img src="{data_uri(png)}" alt="{escape(alt, quote=True)}" style="max-width:100%;height:auto">'
