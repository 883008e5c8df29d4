"""Host memory with streamed data (issue 22.3's benchmark: peak host memory at 1× and 8× the
data within 10% when streamed). A synthetic dataset of SCALE × 1,797 digits (each sample a
digit plus seeded noise, made on demand by a Dataset, so that nothing but the loader holds
it), ``spectrum --top 1`` on the sample MLP with the products streamed too
(``--hvp-strategy stream``, so that no kept graph holds the data either), float32. Peak RSS
of the process (``/usr/bin/time -f %M``), with the data streamed and held.

    python benchmarks/stream_data.py [--scales 1 8]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FACTORY = '''
import numpy as np, torch
from torch.utils.data import DataLoader, Dataset


class Noisy(Dataset):
    """SCALE copies of the digits, each sample with its own seeded noise, made on demand."""

    def __init__(self, path, scale):
        d = np.load(path)
        self.x, self.y, self.n = torch.from_numpy(d["x"]), torch.from_numpy(d["y"]), len(d["x"])
        self.length = scale * self.n

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        noise = torch.randn(64, generator=torch.Generator().manual_seed(i)) * 0.01
        return self.x[i % self.n] + noise, self.y[i % self.n]


def make(path, scale):
    return DataLoader(Noisy(path, scale), batch_size=256, shuffle=False)
'''


def peak_mib(scale: int, stream: bool, folder: Path) -> float:
    digits = ROOT / "sample_checkpoints/data/digits.npz"
    ran = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "landscape", "spectrum",
         str(ROOT / "sample_checkpoints/mlp/seed0_epoch100.pt"), "-c", str(ROOT / "configs/mlp.yaml"),
         "--set", "data.path=null", "--set", f"data.factory={folder / 'noisy.py'}:make",
         "--set", f"data.kwargs={{path: {digits}, scale: {scale}}}",
         "--set", f"data.stream={'true' if stream else 'false'}", "--hvp-strategy", "stream",
         "--top", "1", "--json", "-q"], capture_output=True, text=True, check=True)
    return int(ran.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "noisy.py").write_text(FACTORY)
        for stream in (True, False):
            peaks = [peak_mib(scale, stream, folder) for scale in args.scales]
            shown = ", ".join(f"{s}×: {p:.0f} MiB" for s, p in zip(args.scales, peaks))
            print(f"{'streamed' if stream else 'held'}: {shown} (last/first {peaks[-1] / peaks[0]:.2f})")


if __name__ == "__main__":
    main()
