"""Write scikit-learn's handwritten digits (1,797 real 8 x 8 scans, 10 classes) as a class-per-folder PNG tree.

    python examples/digits_folder.py digits-png
    hashbench ingest folder digits-png --name digits --size 32

A small real image set that ships with scikit-learn, for trying `ingest folder` without a download.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits(root: Path) -> int:
    """One PNG per digit image under ``root/<digit>/``; returns how many were written."""
    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(image * 255 / 16).astype(np.uint8)).save(folder / f"{index:04d}.png")
    return len(digits.images)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/digits_folder.py OUTPUT_FOLDER")
    print(f"wrote {write_digits(Path(sys.argv[1]))} images under {sys.argv[1]}")
