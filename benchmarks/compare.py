"""This tool's engine and algorithms side by side with PyHessian, hessian-eigenthings and
curvlinops, in one process, on the same model, data and loss.

    pip install -r benchmarks/requirements.txt --no-deps
    python benchmarks/compare.py [--models mlp cnn_bn] [--repeats 3] [--out benchmarks/results_cpu.md]

Tasks (median time of ``--repeats`` runs, float32 on the CPU, 2 threads):

* ``hvp`` / ``grad``: one full-dataset H·v and one full-dataset gradient;
* ``top1`` / ``top5``: the largest eigenvalues with each library's default or typical
  settings; relative error is the largest over the k eigenvalues;
* ``trace``: this tool's Hutch++ at ``rtol 0.01`` against PyHessian's ``trace()`` (its own
  stopping rule), hessian-eigenthings' ``trace`` (Hutch++, default 100 matvecs) and
  curvlinops' ``hutchpp_trace`` (given the same number of HVPs this tool spent).

Truth: eigenvalues from this tool's Lanczos in float64 at tol 1e-10; tr(H) from the dense
float64 Hessian for the MLP, from float64 Hutch++ at rtol 1e-3 for the CNN (its standard
error is printed). Every library sees the model in eval mode (BatchNorm running statistics)
and the dataset loss Σ_b n_b·L_b / N over batches of 256.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
import traceback
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from landscape_cli.analyses.spectrum import spectrum
from landscape_cli.analyses.trace import trace as lt_trace
from landscape_cli.config import load_config
from landscape_cli.engine.hvp import HVPEngine
from landscape_cli.loading.assemble import load

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = {
    "mlp": ROOT / "sample_checkpoints/mlp/seed0_epoch100.pt",
    "cnn_bn": ROOT / "sample_checkpoints/cnn_bn/final.pt",
}
ROWS: list[dict] = []


def machine() -> str:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    nproc = os.cpu_count()
    return (f"nproc {nproc}, CPU {cpu}, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, float32")


def timed(fn, repeats: int, warm: bool = False):
    """Median wall time of ``repeats`` runs of fn(run_index) -> (hvps, value); returns the
    median time and the (hvps, value) of the run with the median time."""
    if warm:
        fn(0)
    runs = []
    for r in range(repeats):
        torch.manual_seed(r)
        start = time.perf_counter()
        out = fn(r)
        runs.append((time.perf_counter() - start, out))
    runs.sort(key=lambda t: t[0])
    return runs[len(runs) // 2]


def rel_err(values, ref) -> float:
    values = sorted((float(v) for v in values), reverse=True)
    return max(abs(v - r) / abs(r) for v, r in zip(values, ref))


def add(model, task, library, seconds, hvps, err, note=""):
    ROWS.append(dict(model=model, task=task, library=library, time=seconds, hvps=hvps,
                     err=err, note=note))
    e = "" if err is None else f"{err:.2e}"
    print(f"  {task:6s} {library:38s} {seconds if seconds is None else round(seconds, 4)!s:>9} s"
          f"  hvps={hvps!s:>5}  err={e}  {note}", flush=True)


def fail(model, task, library, exc):
    msg = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:80] if str(exc).strip() else ''}"
    traceback.print_exc()
    add(model, task, library, None, None, None, msg)


class Counter:
    def __init__(self):
        self.n = 0


def count_calls(obj, attr: str) -> Counter:
    """Wrap ``obj.attr`` so that each call adds one to the returned counter."""
    counter, inner = Counter(), getattr(obj, attr)

    def counted(*args, **kwargs):
        counter.n += 1
        return inner(*args, **kwargs)

    setattr(obj, attr, counted)
    return counter


# ----------------------------------------------------------------------------- references

def references(name, ckpt):
    config = load_config(ROOT / "configs" / f"{name}.yaml", ["device=cpu", "dtype=float64"])
    problem = load(config, ckpt).problem
    engine = HVPEngine(problem)
    start = time.perf_counter()
    ref = spectrum(engine.hvp, problem.n, top=5, tol=1e-10, dtype=problem.dtype)
    eig_ref = ref.top_eigenvalues
    if name == "mlp":
        eye = torch.eye(problem.n, dtype=torch.float64)
        dense = torch.cat([engine.hvp(eye[i:i + 128]) for i in range(0, problem.n, 128)])
        tr_ref, tr_note = float(dense.diagonal().sum()), "dense float64 Hessian"
        eig_dense = torch.linalg.eigvalsh(0.5 * (dense + dense.T)).flip(0)[:5].tolist()
        tr_note += f"; dense top-5 vs Lanczos max rel. diff {rel_err(eig_dense, eig_ref):.1e}"
    else:
        est = lt_trace(engine.hvp, problem.n, rtol=1e-3, max_hvps=problem.n,
                       dtype=problem.dtype).estimate
        tr_ref = est.trace
        tr_note = (f"float64 Hutch++ rtol 1e-3: stderr {est.stderr / abs(est.trace):.1e} "
                   f"relative, {est.matvecs} HVPs")
    print(f"{name}: reference top-5 {[f'{v:.8g}' for v in eig_ref]} (float64 Lanczos tol 1e-10, "
          f"{ref.lanczos_steps} steps); trace {tr_ref:.6g} ({tr_note}); "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    return eig_ref, tr_ref, tr_note


# ----------------------------------------------------------------------------- libraries

def bench_model(name, ckpt, repeats):
    eig_ref, tr_ref, tr_note = references(name, ckpt)
    config = load_config(ROOT / "configs" / f"{name}.yaml", ["device=cpu", "dtype=float32"])
    problem = load(config, ckpt).problem
    n = problem.n
    x = torch.cat([b[0] for b in problem.batches])
    y = torch.cat([b[1] for b in problem.batches])
    loader = DataLoader(TensorDataset(x, y), batch_size=config.data.batch_size, shuffle=False)
    base_model = problem.objective.model
    criterion = torch.nn.CrossEntropyLoss()

    def fresh_model():
        m = copy.deepcopy(base_model).eval()
        for p in m.parameters():
            p.requires_grad_(True)
        return m

    def plain_grad(model):
        model.zero_grad()
        for xb, yb in loader:
            (criterion(model(xb), yb) * len(xb) / len(x)).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    # ---------------- landscape
    lib = "landscape (Lanczos / Hutch++)"
    v = torch.randn(n)
    t, _ = timed(lambda r: HVPEngine(problem, strategy="stream").grad(), repeats, True)
    add(name, "grad", "landscape", t, 0, None)
    engine_c = HVPEngine(problem)
    t, _ = timed(lambda r: engine_c.hvp(v), repeats, True)
    add(name, "hvp", "landscape (cached graph)", t, 1, None,
        "graph built once per analysis, cost included in top-k/trace rows")
    for k in (1, 5):
        def run(r, k=k):
            eng = HVPEngine(problem)
            res = spectrum(eng.hvp, n, top=k, tol=1e-4, seed=r, dtype=problem.dtype)
            return eng.cost.hvps, res.top_eigenvalues
        t, (h, vals) = timed(run, repeats)
        add(name, f"top{k}", lib, t, h, rel_err(vals, eig_ref), "tol 1e-4 (default)")

    def run_tr(r):
        eng = HVPEngine(problem)
        est = lt_trace(eng.hvp, n, rtol=0.01, seed=r, dtype=problem.dtype).estimate
        return est.matvecs, est.trace
    t, (lt_tr_hvps, val) = timed(run_tr, repeats)
    add(name, "trace", lib, t, lt_tr_hvps, abs(val - tr_ref) / abs(tr_ref), "Hutch++ rtol 0.01")

    # ---------------- PyHessian 0.1
    lib = "PyHessian 0.1"
    try:
        from pyhessian import hessian as PyH
        if not hasattr(torch, "eig"):  # density() calls the removed torch.eig
            def _eig(a, eigenvectors=False):
                w, q = torch.linalg.eigh(a)
                return torch.stack([w, torch.zeros_like(w)], 1), q
            torch.eig = _eig

        def make_ph():
            h = PyH(fresh_model(), criterion, dataloader=loader, cuda=False)
            return h, count_calls(h, "dataloader_hv_product")

        h, _ = make_ph()
        vl = list(torch.randn(n).split([p.numel() for p in h.params]))
        vl = [a.view_as(p) for a, p in zip(vl, h.params)]
        t, _ = timed(lambda r: h.dataloader_hv_product(vl), repeats, True)
        add(name, "hvp", lib, t, 1, None, "double backward per batch")
        for k in (1, 5):
            def run(r, k=k):
                hh, c = make_ph()
                vals, _ = hh.eigenvalues(top_n=k)
                return c.n, vals
            t, (hc, vals) = timed(run, repeats)
            add(name, f"top{k}", lib, t, hc, rel_err(vals, eig_ref),
                "power iteration, defaults maxIter 100 tol 1e-3")

        def run(r):
            hh, c = make_ph()
            samples = hh.trace()
            return c.n, sum(samples) / len(samples)
        t, (hc, val) = timed(run, repeats)
        add(name, "trace", lib, t, hc, abs(val - tr_ref) / abs(tr_ref),
            "Hutchinson, own stopping rule (maxIter 100 tol 1e-3)")
    except Exception as exc:
        fail(name, "all", lib, exc)

    # ---------------- hessian-eigenthings 1.0.0a5
    lib = "hessian-eigenthings 1.0.0a5"
    try:
        import hessian_eigenthings as he
        n_batches = len(loader)

        def loss_fn(model, batch):
            # it averages batches with equal weight; reweight so the operator is Σ n_b L_b / N
            xb, yb = batch
            return criterion(model(xb), yb) * (len(xb) * n_batches / len(x))

        def make_op():
            op = he.HessianOperator(fresh_model(), loader, loss_fn)
            return op, count_calls(op, "matvec")

        op, _ = make_op()
        t, _ = timed(lambda r: op.matvec(v), repeats, True)
        add(name, "hvp", lib, t, 1, None, "double backward per batch")
        for k in (1, 5):
            def run(r, k=k):
                o, c = make_op()
                res = he.lanczos(o, k=k, seed=r, which="LA")
                return c.n, res.eigenvalues.tolist()
            t, (hc, vals) = timed(run, repeats)
            add(name, f"top{k}", lib + " lanczos", t, hc, rel_err(vals, eig_ref),
                "defaults: max_iter 2k")

            def run(r, k=k):
                o, c = make_op()
                res = he.deflated_power_iteration(o, k=k, seed=r)
                return c.n, res.eigenvalues.tolist()
            t, (hc, vals) = timed(run, repeats)
            add(name, f"top{k}", lib + " power", t, hc, rel_err(vals, eig_ref),
                "defaults: max_iter 100 tol 1e-4")

        def run(r):
            o, c = make_op()
            est = he.trace(o, seed=r).estimate
            return c.n, est
        t, (hc, val) = timed(run, repeats)
        add(name, "trace", lib, t, hc, abs(val - tr_ref) / abs(tr_ref),
            "Hutch++, default 100 matvecs")
    except Exception as exc:
        fail(name, "all", lib, exc)

    # ---------------- curvlinops
    try:
        from importlib.metadata import version

        import curvlinops
        import scipy.sparse.linalg
        lib = f"curvlinops {version('curvlinops-for-pytorch')}"

        def make_h():
            m = fresh_model()
            H = curvlinops.HessianLinearOperator(m, criterion, list(m.parameters()), loader,
                                                 check_deterministic=False)
            counter = Counter()
            inner = H._matmat

            def counted(X):
                counter.n += X[0].shape[-1]
                return inner(X)
            H._matmat = counted
            return H, counter

        H, _ = make_h()
        t, _ = timed(lambda r: H.gradient_and_loss(), repeats, True)
        add(name, "grad", lib, t, 0, None)
        t, _ = timed(lambda r: H @ v, repeats, True)
        add(name, "hvp", lib, t, 1, None)
        for k in (1, 5):
            def run(r, k=k):
                HH, c = make_h()
                vals = scipy.sparse.linalg.eigsh(HH.to_scipy(), k=k, which="LA",
                                                 return_eigenvectors=False)
                return c.n, list(vals)
            t, (hc, vals) = timed(run, repeats)
            add(name, f"top{k}", lib, t, hc, rel_err(vals, eig_ref),
                "scipy eigsh (ARPACK) on to_scipy(), defaults")

        def run(r):
            HH, c = make_h()
            est = float(curvlinops.hutchpp_trace(HH, num_matvecs=3 * -(-lt_tr_hvps // 3)))
            return c.n, est
        t, (hc, val) = timed(run, repeats)
        add(name, "trace", lib, t, hc, abs(val - tr_ref) / abs(tr_ref),
            "hutchpp_trace, landscape's HVP count rounded up to a multiple of 3")
    except Exception as exc:
        fail(name, "all", "curvlinops", exc)

    # plain autograd gradient, the unit the references have no API for
    m = fresh_model()
    t, _ = timed(lambda r: plain_grad(m), repeats, True)
    add(name, "grad", "plain autograd (loop over loader)", t, 0, None)
    return tr_note


def table(notes) -> str:
    lines = ["| model | task | library | time s | HVPs | rel. error | time ÷ landscape | notes |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for row in ROWS:
        base = next((r for r in ROWS if r["model"] == row["model"] and r["task"] == row["task"]
                     and r["library"].startswith("landscape")), None)
        ratio = ("" if row["time"] is None or base is None or base["time"] is None
                 else f"{row['time'] / base['time']:.2f}")
        t = "—" if row["time"] is None else f"{row['time']:.4f}"
        err = "" if row["err"] is None else f"{row['err']:.1e}"
        hv = "" if row["hvps"] is None else str(row["hvps"])
        lines.append(f"| {row['model']} | {row['task']} | {row['library']} | {t} | {hv} | {err} "
                     f"| {ratio} | {row['note']} |")
    refs = "\n".join(f"* {m}: trace reference: {note}" for m, note in notes.items())
    return "\n".join(lines) + "\n\n" + refs + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SAMPLES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results_cpu.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    desc = machine()
    print(desc, flush=True)
    notes = {}
    for name in args.models:
        notes[name] = bench_model(name, SAMPLES[name], args.repeats)
    text = (f"# landscape vs PyHessian, hessian-eigenthings, curvlinops (CPU)\n\n"
            f"Machine: {desc}. Medians of {args.repeats} runs; "
            f"`python benchmarks/compare.py --repeats {args.repeats}`.\n\n"
            "Truth: top-5 eigenvalues from this tool's Lanczos in float64 at tol 1e-10; rel. "
            "error of top-k is the largest over the k eigenvalues. `time ÷ landscape` divides "
            "by the landscape row of the same model and task.\n\n" + table(notes))
    print("\n" + text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
