"""Export scikit-learn's 8x8 handwritten digits to ``data/digits.npz`` (run once).

Needs scikit-learn, which is *not* a dependency of the project: the exported file is
committed, so only regenerating it needs this script::

    pip install scikit-learn
    python sample_checkpoints/export_digits.py

The file holds ``x``: float32 of shape (1797, 64), pixel intensities 0..16 divided by 16
so they lie in [0, 1]; and ``y``: int64 of shape (1797,), the digit labels 0..9.
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

OUT = Path(__file__).resolve().parent / "data" / "digits.npz"


def export(path: Path = OUT) -> None:
    """Write the digits arrays to ``path`` with ``np.savez_compressed``."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x=x, y=y)
    print(f"wrote {path}: x {x.shape} {x.dtype}, y {y.shape} {y.dtype}")


if __name__ == "__main__":
    export()
