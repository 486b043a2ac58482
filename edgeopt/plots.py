"""Charts people read in the run report and the Prefect UI: accuracy-vs-cost Pareto charts and training curves.

PNG bytes from matplotlib (Agg backend, no display needed). Labels never print over each other: points carry
short numbers placed where no other label or marker is, and a key beside the chart maps numbers to names. Text
from files (candidate names) goes through `plain()`: one line, no mathtext.
"""
from __future__ import annotations

import io
import math
from typing import Any

from edgeopt.markup import one_line

FONT = 9


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def plain(text: Any, width: int = 40) -> str:
    """User text for a matplotlib label: one line, `$` not read as mathtext, cut to `width` characters."""
    s = one_line(text)
    s = s if len(s) <= width else s[:width - 1] + "~"
    return s.replace("$", r"\$")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _place_labels(ax, fig, groups: list[tuple[str, tuple[float, float]]]) -> None:
    """Annotate each (label, data point) next to it, at the first of a few offsets where the label's box hits no
    other label and no marker; the fallback is the first offset."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    markers = [to_px(xy) for _, xy in groups]
    area = ax.get_window_extent(renderer)
    taken: list[tuple[float, float, float, float]] = []
    offsets = [(5, 3), (5, -11), (-5, 3), (-5, -11), (5, 12), (-5, 12), (5, -20), (-5, -20), (14, -4), (-14, -4)]
    scale = fig.dpi / 72.0
    for i, (label, xy) in enumerate(groups):
        w, h = (len(label) * 0.62 * FONT + 2) * scale, (FONT + 2) * scale
        px, py = markers[i]
        best = None
        for dx, dy in offsets:
            x0 = px + dx * scale - (w if dx < 0 else 0)
            y0 = py + dy * scale
            box = (x0, y0, x0 + w, y0 + h)
            inside = area.x0 <= box[0] and box[2] <= area.x1 and area.y0 <= box[1] and box[3] <= area.y1
            hits_label = any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken)
            hits_marker = any(box[0] - 3 < mx < box[2] + 3 and box[1] - 3 < my < box[3] + 3
                              for j, (mx, my) in enumerate(markers) if j != i)
            if inside and not hits_label and not hits_marker:
                best = (dx, dy, box)
                break
        if best is None:
            dx, dy = offsets[0]
            best = (dx, dy, (px + dx * scale, py + dy * scale, px + dx * scale + w, py + dy * scale + h))
        dx, dy, box = best
        taken.append(box)
        ax.annotate(label, xy, textcoords="offset points", xytext=(dx, dy), fontsize=FONT,
                    ha="right" if dx < 0 else "left", va="bottom", zorder=5)


def pareto_png(rows: list[dict[str, Any]], x_key: str, xlabel: str, title: str, *, front: list[str],
               selected: str | None = None, dominated_by: list[str] | None = None, y_key: str = "accuracy",
               ylabel: str = "test accuracy (%)") -> bytes:
    """Accuracy vs a cost: every measured candidate as a numbered point (filled: passes the gate, hollow: fails),
    the Pareto front as a red staircase, the gate's pick as a star. A pick off this front says so in the legend,
    with the candidates that dominate it. Rows need `name`, x_key, y_key; optional `index` (the table's #) and
    `verdict`. A key beside the chart maps numbers to names."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    pts = [r for r in rows if _finite(r.get(x_key)) and _finite(r.get(y_key))]
    given = [r.get("index") for r in rows]
    unique = None not in given and len(set(given)) == len(given)  # a sweep merges runs: their #s repeat
    number = {r["name"]: r["index"] if unique else i + 1 for i, r in enumerate(rows)}
    many = len(pts) > 30  # sweeps: number only the front and the pick, or the key would not fit
    fig, (ax, key_ax) = plt.subplots(1, 2, figsize=(10, 5.6), gridspec_kw={"width_ratios": [2.6, 1]})
    try:
        xs = [r[x_key] for r in pts]
        if xs and min(xs) > 0 and max(xs) / min(xs) > 5:
            ax.set_xscale("log")  # costs spanning decades: a linear axis crams the small ones together
            from matplotlib.ticker import FuncFormatter

            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.03, not 3x10^-2
            ax.xaxis.set_minor_formatter(FuncFormatter(
                lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else ""))  # 0.02, 0.03, 0.05 between decades
        for r in pts:
            verdict = str(r.get("verdict") or "")
            passed, on = verdict.startswith("pass"), r["name"] in front
            ax.scatter(r[x_key], r[y_key], s=55 if on else 35, zorder=3, linewidths=1.4,
                       facecolors=("tab:blue" if passed else "white") if verdict not in ("", "-") else "tab:gray",
                       edgecolors="tab:red" if on else ("tab:blue" if passed else "tab:gray"))
        by_name = {r["name"]: r for r in pts}
        if front:
            fx, fy = [by_name[n][x_key] for n in front], [by_name[n][y_key] for n in front]
            ax.step(fx, fy, where="post", color="tab:red", alpha=0.6, zorder=2)
        if selected in by_name:
            s = by_name[selected]
            ax.scatter(s[x_key], s[y_key], s=300, marker="*", c="gold", edgecolors="black", zorder=4)
        ax.margins(x=0.08, y=0.12)
        labelled = [r for r in pts if not many or r["name"] in front or r["name"] == selected]
        groups: dict[tuple[float, float], list[str]] = {}
        for r in labelled:  # points drawn on top of each other share one label "3,7"
            groups.setdefault((r[x_key], r[y_key]), []).append(str(number[r["name"]]))
        _place_labels(ax, fig, [(",".join(v), xy) for xy, v in groups.items()])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")

        key_ax.axis("off")
        off = dominated_by and selected in by_name
        beaten = sorted(number.get(n, 0) for n in (dominated_by or []))
        beaten_text = ", ".join(map(str, beaten[:6])) + (f" (+{len(beaten) - 6})" if len(beaten) > 6 else "")
        handles = [Line2D([], [], color="tab:red", alpha=0.6, label="Pareto front (red ring, red in the key)"),
                   Line2D([], [], ls="", marker="o", mfc="tab:blue", mec="tab:blue", label="passes the gate"),
                   Line2D([], [], ls="", marker="o", mfc="white", mec="tab:gray", label="fails a gate"),
                   Line2D([], [], ls="", marker="*", ms=13, mfc="gold", mec="black",
                          label="gate's pick" + (f", off this front:\ndominated by {beaten_text}" if off else ""))]
        key_ax.legend(handles=handles, loc="upper left", fontsize=FONT, frameon=False, borderaxespad=0)
        lines = [(f"{number[r['name']]:>3}  {plain(r['name'], 30)}", r["name"]) for r in labelled]
        top, step = 0.66, min(0.045, 0.62 / max(len(lines), 1))
        size = FONT if step >= 0.03 else 6
        for i, (text, name) in enumerate(lines):
            key_ax.text(0, top - i * step, text + ("  <- pick" if name == selected else ""), fontsize=size,
                        family="monospace", transform=key_ax.transAxes, va="top",
                        color="tab:red" if name in front else "black")
        if many:
            key_ax.text(0, 0.0, f"{len(pts) - len(labelled)} other points unnumbered", fontsize=FONT - 1,
                        transform=key_ax.transAxes, color="dimgray")
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)


def curves_png(curves: list[dict[str, Any]]) -> bytes:
    """Training curves: one row per training run (`label`, `history` rows with epoch, train_/val_ accuracy and
    loss, optional `best_epoch`), accuracy left and loss right, train and validation overlaid."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(curves), 2, figsize=(10, 2.3 * len(curves) + 0.5), squeeze=False)
    try:
        for row, c in zip(axes, curves):
            hist = c["history"]
            epochs = [h["epoch"] for h in hist]
            for ax, metric, unit in ((row[0], "accuracy", "accuracy (%)"), (row[1], "loss", "loss")):
                for split, color in (("train", "tab:blue"), ("val", "tab:orange")):
                    ys = [h.get(f"{split}_{metric}") for h in hist]
                    if any(_finite(y) for y in ys):
                        ax.plot(epochs, [y if _finite(y) else math.nan for y in ys], color=color, marker=".",
                                label="train" if split == "train" else "validation")
                if c.get("best_epoch"):
                    ax.axvline(c["best_epoch"], color="gray", ls=":", lw=1, label="best val epoch (kept)")
                ax.set_ylabel(unit)
                ax.grid(alpha=0.3)
                ax.set_title(f"{plain(c['label'], 60)}: {metric}", fontsize=9, loc="left")
                if len(epochs) <= 12:
                    ax.set_xticks(epochs)
            row[1].legend(fontsize=FONT, loc="upper right")
        for ax in axes[-1]:
            ax.set_xlabel("epoch")
        fig.tight_layout()
        return _png(fig, dpi=100)
    finally:
        plt.close(fig)


def note_png(text: str) -> bytes:
    """A small image saying why a chart is empty (an output DVC expects must exist in every run)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 1.2))
    try:
        ax.axis("off")
        ax.text(0.5, 0.5, plain(text, 90), ha="center", va="center", fontsize=10)
        return _png(fig)
    finally:
        plt.close(fig)
