"""A model of the size users bring (issue 27.4): GPT-2 small, 124M parameters, on 16×128 tokens.

    python benchmarks/gpt2_small.py build     # train 3 AdamW steps, save_pretrained + landscape.yaml
    python benchmarks/gpt2_small.py measure   # each figure from the CLI (--json) in a fresh process
    python benchmarks/gpt2_small.py products  # a gradient, exact and fd products, timed directly

``build`` makes ``transformers.GPT2Config()`` with ``n_positions=128`` (12 layers, width 768,
the default vocabulary of 50,257 tokens: 124.4M parameters, the output layer tied to the token
embedding), randomly initialised, trains it 3 AdamW steps on the sample corpus cut into 16
windows of 128 bytes (byte-level tokens: ids < 256 of the vocabulary), and writes
``save_pretrained`` (safetensors) and a ``landscape.yaml`` into ``benchmarks/.gpt2_small/``
(ignored by git). The config's model, data and loss are this file's ``make_gpt2``,
``corpus_windows`` and ``lm_loss``. ``measure`` writes each command's report under
``.gpt2_small/runs/`` and prints a Markdown table; ``products`` times a gradient, exact
products and ``fd`` products (2 gradients, 4 with the error measured) directly.
transformers is needed here only.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CORPUS = ROOT / "sample_checkpoints" / "data" / "corpus.txt"
FOLDER = HERE / ".gpt2_small"
SEQUENCES, CONTEXT = 16, 128
TRAIN_STEPS, LEARNING_RATE = 3, 6e-4

CONFIG = f"""\
# GPT-2 small (124.4M parameters) written by benchmarks/gpt2_small.py build: 16 windows of 128
# byte-level tokens of the sample corpus, mean next-token cross-entropy.
#   landscape spectrum {FOLDER.relative_to(ROOT)} --top 1
model:
  factory: ../gpt2_small.py:make_gpt2
checkpoint: {{key: auto, strip_prefix: auto, strict: true}}
data:
  factory: ../gpt2_small.py:corpus_windows
  batch_size: {SEQUENCES}
loss:
  fn: ../gpt2_small.py:lm_loss
device: auto
dtype: float32
seed: 0
bn: eval
"""


def make_gpt2() -> nn.Module:
    """``GPT2LMHeadModel`` from the saved ``config.json`` (its weights come from the checkpoint)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config.from_pretrained(FOLDER))


def corpus_windows(sequences: int = SEQUENCES, context: int = CONTEXT) -> TensorDataset:
    """``sequences`` evenly spaced windows of the corpus' UTF-8 bytes: x = ``context`` tokens,
    y = the same shifted by one (int64)."""
    ids = torch.tensor(list(CORPUS.read_bytes()), dtype=torch.int64)
    stride = (len(ids) - context - 1) // max(sequences - 1, 1)
    windows = torch.stack([ids[i * stride : i * stride + context + 1] for i in range(sequences)])
    return TensorDataset(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over every position of ``batch = (x, y)``."""
    x, y = batch
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def build() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_positions=CONTEXT))
    data = corpus_windows()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for step in range(TRAIN_STEPS):
        start = time.perf_counter()
        loss = lm_loss(model, data.tensors)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step + 1}: loss {loss.item():.4f} ({time.perf_counter() - start:.1f} s)", flush=True)
    FOLDER.mkdir(exist_ok=True)
    model.save_pretrained(FOLDER)
    (FOLDER / "landscape.yaml").write_text(CONFIG)
    n = sum(p.numel() for p in model.parameters())
    print(f"{n:,} parameters saved to {FOLDER}")


#: the parameter groups of the per-block run (``--blocks NAME=GLOB,...``): 4 blocks, so that a
#: round of products is 4 rows (``module`` or ``tensor`` would give 100-odd blocks)
GROUPS = ("embedding=transformer.wte.*,embedding=transformer.wpe.*,attention=*.attn.*,"
          "mlp=*.mlp.*,norm=*.ln_*")

#: name: landscape arguments after the checkpoint folder (``--json`` is added), each at the
#: default memory budget (40% of the RAM)
RUNS = {
    "gradient": ["sharpness", "--measures", "grad_norm", "--hvp-strategy", "stream"],
    "spectrum_fd": ["spectrum", "--top", "1", "--hvp-strategy", "fd"],
    "trace_fd": ["trace", "--max-hvps", "20", "--hvp-strategy", "fd"],
    "spectrum_exact": ["spectrum", "--top", "1"],
    "trace_exact": ["trace", "--max-hvps", "20"],
    "per_block_fd": ["spectrum", "--per-block", "--top", "1", "--blocks", GROUPS, "--hvp-strategy", "fd"],
}


def measure(names: list[str], extra: list[str], limit_gib: float | None) -> None:
    """Each run in a fresh process; its report goes to ``runs/NAME.json``, its one-line error
    (if any) is printed with the exit code. ``limit_gib``: the processes' address space, so that
    a run that outgrows a shared machine fails alone instead of waking the OOM killer."""
    def limit() -> None:
        if limit_gib is not None:
            size = int(limit_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

    runs = FOLDER / "runs"
    runs.mkdir(exist_ok=True)
    print("| run | exit | wall s | HVPs | grads | peak memory GiB | strategy | attention |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for name in names:
        command = ["landscape", *RUNS[name][:1], str(FOLDER), *RUNS[name][1:], *extra, "--json"]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, preexec_fn=limit)
        wall = time.perf_counter() - start
        (runs / f"{name}.json").write_text(done.stdout)
        if done.returncode not in (0, 1):
            print(f"| {name} | {done.returncode} | {wall:.1f} | | | | {done.stderr.strip()[-300:]} | |",
                  flush=True)
            continue
        report = json.loads(done.stdout)
        cost, settings = report.get("cost", {}), report.get("settings", {})
        peak = cost.get("peak_memory_bytes", 0) / 2**30
        print(f"| {name} | {done.returncode} | {wall:.1f} | {cost.get('hvps')} | {cost.get('grads')} | "
              f"{peak:.2f} | {settings.get('hvp_strategy')} | {settings.get('attention')} |", flush=True)


def _timed(what: str, fn):
    """``fn()``, its seconds printed after ``what``."""
    start = time.perf_counter()
    out = fn()
    print(f"{what}: {time.perf_counter() - start:.1f} s", flush=True)
    return out


def products(parts: list[str]) -> None:
    """Seconds of each piece in one process, one call each (a call is 10 s–2 minutes, so the
    fixed costs the CLI's differences cancel are absent here): with SDPA's math backend, a plain
    gradient, the kept first-order graph and two exact products through it (``cached``); then
    with the fused kernels, a gradient, two ``fd`` products (2 gradients each, the first with
    its error measured: 4) and a checked one (4). ``parts``: ``exact``, ``fd`` or both."""
    from landscape_cli.config import load_config
    from landscape_cli.engine.passes import Passes
    from landscape_cli.session import load

    problem = load(load_config(FOLDER / "landscape.yaml", []), FOLDER).problem
    print(f"n = {problem.n:,}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    generator = torch.Generator().manual_seed(0)
    vector = torch.randn(problem.n, generator=generator, dtype=problem.theta0.dtype)
    passes = Passes(problem)
    if "exact" in parts:
        _exact_products(problem, passes, vector)
    if "fd" in parts:
        _fd_products(problem, passes, vector)


def _peak() -> str:
    return f"peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def _exact_products(problem, passes, vector: torch.Tensor) -> None:
    from landscape_cli.engine.hvp import HVPEngine

    _timed("gradient (math SDPA)", passes.value_and_grad)
    print(_peak(), flush=True)
    engine = _timed("kept first-order graph (math SDPA)", lambda: HVPEngine(problem, strategy="cached"))
    for i in range(2):
        _timed(f"exact product {i + 1} (cached, math SDPA)", lambda e=engine: e.hvp(vector))
    del engine  # and its kept graph
    print(_peak(), flush=True)


def _fd_products(problem, passes, vector: torch.Tensor) -> None:
    from landscape_cli.engine.hvp import HVPEngine

    problem.objective.fused_attention = True  # as the fd engine runs every pass
    _timed("gradient (fused SDPA)", passes.value_and_grad)
    print(_peak(), flush=True)
    fd = HVPEngine(problem, strategy="fd", passes=passes)
    for i in range(2):
        _timed(f"fd product {i + 1} (fused SDPA{', error measured' if i == 0 else ''})",
               lambda: fd.hvp(vector))
    _timed("checked fd product (6 gradients, Richardson)", lambda: fd.checked(vector[None]))
    print(f"fd measured error per unit vector {fd.product_error():.3e}; {_peak()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["build", "measure", "products"])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--limit-gib", type=float, default=None)
    parser.add_argument("--parts", nargs="+", default=["exact", "fd"], choices=["exact", "fd"])
    args, extra = parser.parse_known_args()
    if args.what == "build":
        build()
    elif args.what == "measure":
        measure(args.runs, extra, args.limit_gib)
    else:
        products(args.parts)


if __name__ == "__main__":
    sys.exit(main())
