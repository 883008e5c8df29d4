"""This tool's engine and algorithms side by side with PyHessian, hessian-eigenthings and
curvlinops, in one process, on the same model, data and loss.

    pip install --no-deps -r benchmarks/requirements.txt
    python benchmarks/compare.py [--models mlp cnn_bn ...] [--device cpu|cuda] [--repeats 3]

Tasks (median time of ``--repeats`` runs, float32; on the CPU with 2 threads):

* ``grad``, ``hvp``: one full-dataset gradient and one H·v; ``hvp×8`` / ``hvp×32``: the time
  per vector of H·V for a block of 8 / 32 vectors (the libraries without a block API loop);
* ``top1`` / ``top5``: the largest eigenvalues with each library's defaults; the relative
  error is the largest over the k eigenvalues;
* ``top1@0.001`` / ``top5@0.001`` (task ``target``): the same at equal accuracy: each
  library's accuracy knob (tolerance, or step count) set to the first value, cheapest first,
  whose every timed run reaches a relative error of 1e-3 (``to_target``);
* ``trace``: this tool's Hutch++ until its 95% interval is ±1% (``--trace-interval``) against
  PyHessian's ``trace()`` (its own stopping rule), hessian-eigenthings' ``trace`` (Hutch++,
  100 matvecs) and curvlinops' ``hutchpp_trace`` (given as many HVPs as this tool spent);
* ``slq``: a spectral density from the same runs × steps, this tool's batched SLQ against
  PyHessian's ``density()`` (with ``torch.eig``, removed from torch, shimmed by ``eigh``).

Truth: eigenvalues from this tool's Lanczos in float64 at tol 1e-10 (in float32 at the tol
``--fast-reference TOL`` gives, which the GPU ResNet-18 uses); tr(H) from the dense float64 Hessian for
the MLP, else from Hutch++ at rtol 2e-3 (its standard error is printed). Every library sees
the model in eval mode and the dataset loss Σ_b n_b·L_b / N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
from cases import CASES, ROOT, build

from landscape_cli.analyses.spectrum import spectrum
from landscape_cli.analyses.trace import trace as lt_trace
from landscape_cli.engine.hvp import HVPEngine
from landscape_cli.linalg.slq import slq

ROWS: list[dict] = []
RUNS: dict[str, list[dict]] = {}  # model -> its runs: machine, repeats, command, trace reference
BLOCKS = [1, 8, 32]  # block sizes of the amortised HVP rows (--blocks)
LOOPED_BLOCKS = [1, 8]  # the same for PyHessian and hessian-eigenthings, which loop (--reference-blocks)
TRACE_INTERVAL = [0.01]  # relative half-width of the trace rows' 95% interval (--trace-interval)
TARGET_ERR = 1e-3  # top-k accuracy the issue compares at
# the tolerances the top-k@TARGET_ERR oracle tries, loosest first, for every tolerance knob:
# a residual of 3e-2·|λ|max can already mean a 1e-3 eigenvalue error (the error is ~r²/gap)
TOL_LADDER = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)


SYNC = [lambda: None]
OUT: list[Path] = []
LONG_REPEATS = [3]  # repeats of the top-k, trace and SLQ rows (--long-repeats)
REFERENCE_TOL = [1e-7]  # of the float32 reference (--fast-reference TOL)


def machine(device: str) -> str:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return (f"nproc {os.cpu_count()}, CPU {cpu}{gpu}, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, float32")


def time_run(fn, r: int):
    """Wall time and output of fn(r), run r (seeded with r)."""
    torch.manual_seed(r)
    SYNC[0]()
    start = time.perf_counter()
    out = fn(r)
    SYNC[0]()
    return time.perf_counter() - start, out


def median_run(runs):
    """The (time, output) of the run with the median time."""
    return sorted(runs, key=lambda t: t[0])[len(runs) // 2]


def timed(fn, repeats: int, warm: bool = False):
    """Median wall time of ``repeats`` runs of fn(run_index) -> (hvps, value); returns the
    median time and the (hvps, value) of the run with the median time."""
    if warm:
        fn(0)
    return median_run([time_run(fn, r) for r in range(repeats)])


def rel_err(values, ref) -> float:
    values = sorted((float(v) for v in values), reverse=True)
    return max(abs(v - r) / abs(r) for v, r in zip(values, ref))


def add(model, task, library, seconds, hvps, err, note=""):
    """Record a row; it replaces the row of the same model, task and library from an earlier run."""
    row = dict(model=model, task=task, library=library, time=seconds, hvps=hvps, err=err, note=note)
    key = (model, task, library)
    same = [i for i, r in enumerate(ROWS) if (r["model"], r["task"], r["library"]) == key]
    if same:
        ROWS[same[0]] = row
    else:
        ROWS.append(row)
    write_report()
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

def references(name: str, device: str, fast: bool, tasks: set[str]):
    """Top-5 eigenvalues and tr(H) to compare against, and how they were obtained."""
    if not tasks & {"top", "target", "trace"}:
        return [float("nan")] * 5, float("nan"), "not computed"
    problem = build(name, device, "float32" if fast else "float64").problem
    engine = HVPEngine(problem)
    start = time.perf_counter()
    # capped: a float32 run cannot always reach a tight tol, and would otherwise go on to n steps
    ref = spectrum(engine, top=5, tol=REFERENCE_TOL[0] if fast else 1e-10,
                   max_hvps=min(problem.n, 400))
    eig_ref = ref.top_eigenvalues
    if name == "mlp":
        eye = torch.eye(problem.n, dtype=torch.float64, device=problem.device)
        dense = torch.cat([engine.hvp(eye[i:i + 128]) for i in range(0, problem.n, 128)]).cpu()
        tr_ref, tr_note = float(dense.diagonal().sum()), "dense float64 Hessian"
        eig_dense = torch.linalg.eigvalsh(0.5 * (dense + dense.T)).flip(0)[:5].tolist()
        tr_note += f"; dense top-5 vs Lanczos max rel. diff {rel_err(eig_dense, eig_ref):.1e}"
    elif "trace" not in tasks:
        tr_ref, tr_note = float("nan"), "not computed"
    else:
        rtol, cap = (5e-3, 600) if fast else (2e-3, 3000)  # float64 on a ResNet is hours
        est = lt_trace(engine, rtol=rtol, max_hvps=min(problem.n, cap)).estimate
        tr_ref = est.trace
        tr_note = (f"{str(problem.dtype)[6:]} Hutch++ rtol {rtol:g}: stderr "
                   f"{est.stderr / abs(est.trace):.1e} relative, {est.matvecs} HVPs")
    print(f"{name}: reference top-5 {[f'{v:.8g}' for v in eig_ref]} ({ref.lanczos_steps} Lanczos "
          f"steps); trace {tr_ref:.6g} ({tr_note}); {time.perf_counter() - start:.1f} s", flush=True)
    return eig_ref, tr_ref, tr_note


# ----------------------------------------------------------------------------- libraries

def bench_model(name: str, device: str, repeats: int, slq_shape: tuple[int, int], fast: bool,
                libraries: set[str], tasks: set[str]):
    eig_ref, tr_ref, tr_note = references(name, device, fast, tasks)
    case = build(name, device)
    problem, criterion, loader = case.problem, case.criterion, case.loader()
    runs, steps = slq_shape

    def plain_grad(model):
        model.zero_grad()
        for xb, yb in loader:
            (criterion(model(xb), yb) * len(xb) / problem.n_samples).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    # ---------------- landscape
    mode = HVPEngine(problem).mode
    lib = f"landscape ({mode})"
    if "hvp" in tasks:
        bench_hvp(case, plain_grad, repeats, ["cached", "stream"] if mode == "cached" else ["stream"])
    def top_k(tol, r, k):
        eng = HVPEngine(problem)
        res = spectrum(eng, top=k, tol=tol, seed=r)
        return eng.cost.hvps, res.top_eigenvalues

    for k in (1, 5) if "top" in tasks else ():
        t, (h, vals) = timed(lambda r, k=k: top_k(1e-4, r, k), LONG_REPEATS[0])
        add(name, f"top{k}", lib, t, h, rel_err(vals, eig_ref), "Lanczos, tol 1e-4 (default)")
    for k in (1, 5) if "target" in tasks else ():
        to_target(case, k, lib, eig_ref, TOL_LADDER,
                  lambda tol, r, k=k: top_k(tol, r, k), "Lanczos tol")

    lt_tr_hvps = 0
    if "trace" in tasks:
        def run_tr(r):
            eng = HVPEngine(problem)
            est = lt_trace(eng, rtol=TRACE_INTERVAL[0] / 1.96, seed=r).estimate
            return est.matvecs, est.trace
        t, (lt_tr_hvps, val) = timed(run_tr, LONG_REPEATS[0])
        add(name, "trace", lib, t, lt_tr_hvps, abs(val - tr_ref) / abs(tr_ref),
            f"Hutch++ until the 95% interval is ±{TRACE_INTERVAL[0]:.0%} "
            f"(rtol {TRACE_INTERVAL[0] / 1.96:.4f})")

    if "slq" in tasks:
        def run_slq(r):
            eng = HVPEngine(problem)
            res = slq(eng, runs=runs, steps=steps, generator=torch.Generator().manual_seed(r))
            return eng.cost.hvps, res
        t, (h, _) = timed(run_slq, LONG_REPEATS[0])
        add(name, "slq", lib, t, h, None, f"{runs} runs × {steps} steps, batched")

    if "pyhessian" in libraries:
        bench_pyhessian(case, loader, eig_ref, tr_ref, repeats, slq_shape, tasks)
    if "eigenthings" in libraries:
        bench_eigenthings(case, loader, eig_ref, tr_ref, repeats, slq_shape, tasks)
    if "curvlinops" in libraries:
        bench_curvlinops(case, loader, eig_ref, tr_ref, repeats, lt_tr_hvps, slq_shape, tasks)
    return tr_note


def bench_hvp(case, plain_grad, repeats, strategies):
    """One gradient, and H·V per vector for blocks of 1, 8 and 32 with each strategy."""
    name, problem = case.name, case.problem
    t, _ = timed(lambda r: HVPEngine(problem, strategy="stream").grad(), repeats, True)
    add(name, "grad", "landscape", t, 0, None)
    m = case.model()
    t, _ = timed(lambda r: plain_grad(m), repeats, True)
    add(name, "grad", "plain autograd (loop over loader)", t, 0, None)
    for strategy in strategies:
        engine = HVPEngine(problem, strategy=strategy)
        for k in BLOCKS:
            block = torch.randn(k, problem.n, device=problem.device)
            t, _ = timed(lambda r, e=engine, b=block: e.hvp(b), repeats, True)
            add(name, "hvp" if k == 1 else f"hvp×{k}", f"landscape ({strategy})", t / k, k, None,
                "per vector" + ("; graph built once per analysis, its cost is in the top-k rows"
                                if strategy == "cached" else ""))


def _tasks(tasks: set[str], *names: str) -> bool:
    return any(name in tasks for name in names)


def looped_hvp_rows(case, lib: str, repeats: int, matvec) -> None:
    """Rows ``hvp`` / ``hvp×k`` for a library without a block API: k calls of ``matvec``."""
    for k in LOOPED_BLOCKS:
        vectors = torch.randn(k, case.problem.n, device=case.problem.device)
        t, _ = timed(lambda r, vs=vectors: [matvec(v) for v in vs], repeats, True)
        add(case.name, "hvp" if k == 1 else f"hvp×{k}", lib, t / k, k, None,
            "per vector; double backward per batch, one vector at a time")


def to_target(case, k: int, lib: str, eig_ref, settings, run, knob: str) -> None:
    """Row ``top{k}@1e-3``: each library's accuracy knob set, cheapest first, to the first value
    at which every timed run (seeds 0 … repeats−1) is within ``TARGET_ERR`` of the reference; a
    setting is dropped at its first run that misses. Every library gets the same oracle, so the
    row compares time to equal accuracy, not to each one's own defaults."""
    task = f"top{k}@{TARGET_ERR:g}"
    tried = ", ".join(f"{v:g}" for v in settings)
    for setting in settings:
        runs = []  # (time, (hvps, error))
        for r in range(LONG_REPEATS[0]):
            t, (hvps, vals) = time_run(lambda r, s=setting: run(s, r), r)
            runs.append((t, (hvps, rel_err(vals, eig_ref))))
            if runs[-1][1][1] > TARGET_ERR:
                break
        else:
            t, (hvps, err) = median_run(runs)
            add(case.name, task, lib, t, hvps, err,
                f"{knob} {setting:g}: the first of {tried} at ≤ {TARGET_ERR:g} on all "
                f"{len(runs)} seeds (worst {max(e for _, (_, e) in runs):.1e})")
            return
    add(case.name, task, lib, None, None, None, f"no {knob} in {settings} reached {TARGET_ERR:g}")


def bench_pyhessian(case, loader, eig_ref, tr_ref, repeats, slq_shape, tasks):
    name, criterion = case.name, case.criterion
    lib = "PyHessian 0.1"
    try:
        from pyhessian import hessian as PyH

        def _eig(a, eigenvectors=False):  # density() calls torch.eig, now a stub that raises
            w, q = torch.linalg.eigh(a)
            return torch.stack([w, torch.zeros_like(w)], 1), q
        torch.eig = _eig

        def make_ph():
            h = PyH(case.model(), criterion, dataloader=loader, cuda=case.problem.device.type == "cuda")
            return h, count_calls(h, "dataloader_hv_product")

        h, _ = make_ph()
        if _tasks(tasks, "hvp"):
            sizes = [p.numel() for p in h.params]
            looped_hvp_rows(case, lib, repeats, lambda v: h.dataloader_hv_product(
                [a.view_as(p) for a, p in zip(v.split(sizes), h.params)]))
        def power_top(tol, max_iter, r, k):
            hh, c = make_ph()
            vals = hh.eigenvalues(top_n=k, tol=tol, maxIter=max_iter)[0]
            return c.n, vals  # c.n read after the call

        for k in (1, 5) if _tasks(tasks, "top") else ():
            t, (hc, vals) = timed(lambda r, k=k: power_top(1e-3, 100, r, k), LONG_REPEATS[0])
            add(name, f"top{k}", lib, t, hc, rel_err(vals, eig_ref),
                "power iteration, defaults maxIter 100 tol 1e-3")
        for k in (1, 5) if _tasks(tasks, "target") else ():
            to_target(case, k, lib, eig_ref, (*TOL_LADDER, 3e-5, 1e-5),
                      lambda tol, r, k=k: power_top(tol, 1000, r, k), "power iteration (maxIter 1000) tol")
        if _tasks(tasks, "trace"):
            def run(r):
                hh, c = make_ph()
                samples = hh.trace()
                return c.n, sum(samples) / len(samples)
            t, (hc, val) = timed(run, LONG_REPEATS[0])
            add(name, "trace (own rule)", lib, t, hc, abs(val - tr_ref) / abs(tr_ref),
                "Hutchinson, own stopping rule (maxIter 100 tol 1e-3)")
            # To a 95% interval of ±w: p = (1.96·s / (w·mean))² probes, s from 30 pilot probes.
            pilot = torch.tensor(make_ph()[0].trace(maxIter=30, tol=0.0), dtype=torch.float64)
            needed = int((1.96 * pilot.std() / (TRACE_INTERVAL[0] * pilot.mean().abs())) ** 2) + 1
            ran = min(needed, 200)

            def run(r):
                hh, c = make_ph()
                samples = hh.trace(maxIter=ran, tol=0.0)
                return c.n, sum(samples) / len(samples)
            t, (hc, val) = timed(run, 1)
            add(name, "trace", lib, t * needed / ran, needed,
                abs(val - tr_ref) / abs(tr_ref) if ran == needed else None,
                f"Hutchinson with the {needed} probes a ±{TRACE_INTERVAL[0]:.0%} 95% interval needs "
                "(pilot variance)"
                + (f"; timed {ran} probes, scaled linearly" if ran < needed else ""))
        if _tasks(tasks, "slq"):
            runs, steps = slq_shape

            def run(r):
                hh, c = make_ph()
                hh.density(iter=steps, n_v=runs)
                return c.n, None
            t, (hc, _) = timed(run, LONG_REPEATS[0])
            add(name, "slq", lib, t, hc, None, f"density(iter={steps}, n_v={runs}), one run at a time")
    except Exception as exc:
        fail(name, "all", lib, exc)


def bench_eigenthings(case, loader, eig_ref, tr_ref, repeats, slq_shape, tasks):
    name, criterion = case.name, case.criterion
    lib = "hessian-eigenthings 1.0.0a5"
    try:
        import hessian_eigenthings as he
        n_batches = len(loader)

        def loss_fn(model, batch):
            # it averages batches with equal weight; reweight so the operator is Σ n_b L_b / N
            xb, yb = batch
            return criterion(model(xb), yb) * (len(xb) * n_batches / case.problem.n_samples)

        def make_op():
            op = he.HessianOperator(case.model(), loader, loss_fn)
            return op, count_calls(op, "matvec")

        op, _ = make_op()
        if _tasks(tasks, "hvp"):
            looped_hvp_rows(case, lib, repeats, op.matvec)
        def lanczos_top(max_iter, r, k):  # max_iter None: its default, 2k
            o, c = make_op()
            vals = he.lanczos(o, k=k, max_iter=max_iter, seed=r, which="LA").eigenvalues.tolist()
            return c.n, vals  # c.n read after the call

        for k in (1, 5) if _tasks(tasks, "top") else ():
            t, (hc, vals) = timed(lambda r, k=k: lanczos_top(None, r, k), LONG_REPEATS[0])
            add(name, f"top{k}", lib + " lanczos", t, hc, rel_err(vals, eig_ref),
                "defaults: max_iter 2k")

            def run(r, k=k):
                o, c = make_op()
                res = he.deflated_power_iteration(o, k=k, seed=r)
                return c.n, res.eigenvalues.tolist()
            t, (hc, vals) = timed(run, LONG_REPEATS[0])
            add(name, f"top{k}", lib + " power", t, hc, rel_err(vals, eig_ref),
                "defaults: max_iter 100 tol 1e-4")
        for k in (1, 5) if _tasks(tasks, "target") else ():
            to_target(case, k, lib + " lanczos", eig_ref,
                      sorted({round(m * k) for m in (2, 2.5, 3, 4, 6, 8, 12, 16, 24, 32)
                              if m * k < case.problem.n}),
                      lambda max_iter, r, k=k: lanczos_top(max_iter, r, k), "max_iter")
        if _tasks(tasks, "trace"):
            def run(r):
                o, c = make_op()
                estimate = he.trace(o, seed=r).estimate
                return c.n, estimate
            t, (hc, val) = timed(run, LONG_REPEATS[0])
            add(name, "trace", lib, t, hc, abs(val - tr_ref) / abs(tr_ref), "Hutch++, default 100 matvecs")
        if _tasks(tasks, "slq"):
            runs, steps = slq_shape

            def run(r):
                o, c = make_op()
                he.spectral_density(o, num_runs=runs, lanczos_steps=steps, seed=r)
                return c.n, None
            t, (hc, _) = timed(run, LONG_REPEATS[0])
            add(name, "slq", lib, t, hc, None,
                f"spectral_density(num_runs={runs}, lanczos_steps={steps}), one run at a time")
    except Exception as exc:
        fail(name, "all", lib, exc)


def bench_curvlinops(case, loader, eig_ref, tr_ref, repeats, lt_tr_hvps, slq_shape, tasks):
    name, criterion, n = case.name, case.criterion, case.problem.n
    try:
        from importlib.metadata import version

        import curvlinops
        import scipy.sparse.linalg
        lib = f"curvlinops {version('curvlinops-for-pytorch')}"

        def make_h():
            m = case.model()
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
        if _tasks(tasks, "hvp"):
            t, _ = timed(lambda r: H.gradient_and_loss(), repeats, True)
            add(name, "grad", lib, t, 0, None)
        for k in BLOCKS if _tasks(tasks, "hvp") else ():
            block = torch.randn(n, k, device=case.problem.device)
            t, _ = timed(lambda r, b=block: H @ b, repeats, True)
            add(name, "hvp" if k == 1 else f"hvp×{k}", lib, t / k, k, None,
                "per vector; H @ (n × k) matrix: vmapped forward-over-reverse")
        def eigsh_top(tol, r, k):  # tol 0: ARPACK's default, machine precision
            HH, c = make_h()
            vals = scipy.sparse.linalg.eigsh(HH.to_scipy(), k=k, which="LA", tol=tol,
                                             return_eigenvectors=False)
            return c.n, list(vals)

        for k in (1, 5) if _tasks(tasks, "top") else ():
            t, (hc, vals) = timed(lambda r, k=k: eigsh_top(0.0, r, k), LONG_REPEATS[0])
            add(name, f"top{k}", lib, t, hc, rel_err(vals, eig_ref),
                "scipy eigsh (ARPACK) on to_scipy(), defaults")
        for k in (1, 5) if _tasks(tasks, "target") else ():
            to_target(case, k, lib, eig_ref, (*TOL_LADDER, 0.0),
                      lambda tol, r, k=k: eigsh_top(tol, r, k), "eigsh tol")
        if _tasks(tasks, "trace") and lt_tr_hvps:
            def run(r):
                HH, _ = make_h()
                matvecs = 3 * -(-lt_tr_hvps // 3)
                return matvecs, float(curvlinops.hutchpp_trace(HH, num_matvecs=matvecs))
            t, (hc, val) = timed(run, LONG_REPEATS[0])
            add(name, "trace", lib, t, hc, abs(val - tr_ref) / abs(tr_ref),
                "hutchpp_trace, landscape's HVP count rounded up to a multiple of 3")
        if _tasks(tasks, "slq"):
            from curvlinops.papyan2020traces.spectrum import lanczos_approximate_spectrum
            runs, steps = slq_shape

            def run(r):
                HH, c = make_h()
                lanczos_approximate_spectrum(HH, ncv=steps, num_repeats=runs)
                return c.n, None
            t, (hc, _) = timed(run, LONG_REPEATS[0])
            add(name, "slq", lib, t, hc, None,
                f"lanczos_approximate_spectrum(ncv={steps}, num_repeats={runs}): no "
                "reorthogonalisation; HVPs include eigsh for the spectrum's ends (tol 1e-2)")
    except Exception as exc:
        fail(name, "all", "curvlinops", exc)


def table() -> str:
    lines = ["| model | task | library | time s | HVPs | rel. error | time ÷ landscape | notes |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    order = {name: i for i, name in enumerate(CASES)}
    rows = sorted(ROWS, key=lambda r: order[r["model"]])  # stable: a model's rows keep their order
    for row in rows:
        base = next((r for r in rows if r["model"] == row["model"] and r["task"] == row["task"]
                     and r["library"].startswith("landscape")), None)
        ratio = ("" if row["time"] is None or base is None or base["time"] is None
                 else f"{row['time'] / base['time']:.2f}")
        t = "—" if row["time"] is None else f"{row['time']:.4f}"
        err = "" if row["err"] is None else f"{row['err']:.1e}"
        hv = "" if row["hvps"] is None else str(row["hvps"])
        lines.append(f"| {row['model']} | {row['task']} | {row['library']} | {t} | {hv} | {err} "
                     f"| {ratio} | {row['note']} |")
    return "\n".join(lines) + "\n"


def write_report() -> None:
    """``--out`` (markdown) and its ``.json`` sidecar, rewritten after every row, so that a run
    cut short keeps what it measured, and runs of some models or tasks update one table."""
    if not OUT:
        return
    out = OUT[0]
    runs = "\n".join(f"* {m}: {r['machine']}; medians of {r['repeats']} runs ({r['long_repeats']} "
                     f"for top-k, trace and SLQ); `{r['command']}`; "
                     f"trace reference: {r.get('trace_ref', '…')}"
                     for m in CASES for r in RUNS.get(m, []))
    out.write_text(
        "# landscape vs PyHessian, hessian-eigenthings, curvlinops\n\n"
        "Truth: top-5 eigenvalues from this tool's Lanczos (see the module docstring); rel. "
        "error of top-k is the largest over the k eigenvalues. `time ÷ landscape` divides "
        "by the first landscape row of the same model and task.\n\nRuns:\n\n" + runs + "\n\n" + table())
    out.with_suffix(".json").write_text(json.dumps({"runs": RUNS, "rows": ROWS}, indent=1) + "\n")


def load_previous() -> None:
    """Start from an earlier run's sidecar: rows measured again replace theirs (see ``add``)."""
    sidecar = OUT[0].with_suffix(".json")
    if sidecar.exists():
        old = json.loads(sidecar.read_text())
        ROWS.extend(old["rows"])
        RUNS.update({model: latest_runs(runs) for model, runs in old["runs"].items()})


def latest_runs(runs: list[dict]) -> list[dict]:
    """The runs, each command on each machine once, at its latest place: running the same command
    again measures the same rows again, so the earlier entry no longer describes any row."""
    def key(r: dict) -> tuple:
        return r["machine"], r["repeats"], r["long_repeats"], r["command"]

    last = {key(r): i for i, r in enumerate(runs)}
    return [r for i, r in enumerate(runs) if last[key(r)] == i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn_bn", "char_transformer", "resnet8"],
                        choices=CASES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-repeats", type=int, default=None,
                        help="repeats of the top-k, trace and SLQ rows (default: --repeats)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slq", type=int, nargs=2, default=(4, 40), metavar=("RUNS", "STEPS"))
    parser.add_argument("--fast-reference", type=float, default=None, metavar="TOL",
                        help="float32 reference at this tol (for models too large for float64)")
    parser.add_argument("--reference-blocks", nargs="+", type=int, default=[1, 8],
                        help="block sizes for the libraries that loop over vectors")
    parser.add_argument("--libraries", nargs="+", default=["pyhessian", "eigenthings", "curvlinops"])
    parser.add_argument("--tasks", nargs="+", default=["hvp", "top", "target", "trace", "slq"])
    parser.add_argument("--blocks", nargs="+", type=int, default=BLOCKS)
    parser.add_argument("--trace-interval", type=float, default=TRACE_INTERVAL[0], metavar="W",
                        help="relative half-width of the trace rows' 95%% interval (default 0.01; "
                             "a ResNet-8 on the CPU needs ~3,700 products for 0.01)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results_cpu.md"),
                        help="markdown table; its .json sidecar keeps rows not measured again")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    BLOCKS[:] = args.blocks
    LONG_REPEATS[0] = args.long_repeats or args.repeats
    LOOPED_BLOCKS[:] = args.reference_blocks
    TRACE_INTERVAL[0] = args.trace_interval
    if args.fast_reference is not None:
        REFERENCE_TOL[0] = args.fast_reference
    OUT.append(Path(args.out))
    load_previous()
    if args.device.startswith("cuda"):
        SYNC[0] = torch.cuda.synchronize
    desc = machine(args.device)
    print(desc, flush=True)
    command = " ".join(["python benchmarks/compare.py", *sys.argv[1:]])
    for name in args.models:
        run = dict(machine=desc, repeats=args.repeats, long_repeats=LONG_REPEATS[0], command=command)
        RUNS[name] = latest_runs([*RUNS.get(name, []), run])
        run["trace_ref"] = bench_model(name, args.device, args.repeats, tuple(args.slq),
                                              args.fast_reference is not None, set(args.libraries),
                                              set(args.tasks))
        write_report()
    print("\n" + OUT[0].read_text())


if __name__ == "__main__":
    main()
