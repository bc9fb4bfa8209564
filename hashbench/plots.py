"""Figures written next to the results: PNG (matplotlib, no display needed) and a markdown twin."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def confusion_markdown(matrix: np.ndarray, names: list[str], title: str) -> str:
    """Row-normalised shares; the diagonal is each class's MAP@1."""
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    header = "| query class \\ top-1 class | " + " | ".join(names) + " | queries |"
    rule = "|" + "---|" * (len(names) + 2)
    rows = [f"| {name} | " + " | ".join(f"**{v:.2f}**" if i == j else f"{v:.2f}" for j, v in enumerate(shares[i])) + f" | {matrix[i].sum()} |" for i, name in enumerate(names)]
    overall = np.trace(matrix) / max(matrix.sum(), 1)
    return f"### {title}\n\nMAP@1 = {overall:.3f} over {matrix.sum()} queries.\n\n" + "\n".join([header, rule, *rows]) + "\n"


def confusion_png(matrix: np.ndarray, names: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.55 * len(names)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("class of the top-1 retrieved image")
    axes.set_ylabel("query class")
    for i in range(len(names)):
        for j in range(len(names)):
            axes.text(j, i, f"{shares[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white" if shares[i, j] > 0.5 else "black")
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)
