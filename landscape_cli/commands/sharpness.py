"""``sharpness``: every standard sharpness and flatness measure in one report, each with its
definition, its parameters and its error."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from landscape_cli.commands import Command
from landscape_cli.errors import LandscapeError
from landscape_cli.options import BOOTSTRAP, BOOTSTRAP_UNIT, Option
from landscape_cli.results.sharpness import MEASURES, NEEDS, OPTIMIZER_MEASURES, SharpnessResult

if TYPE_CHECKING:
    from landscape_cli.commands.context import Run

_ASCENT, _MC, _CURVATURE = "Ascent measures", "Monte Carlo measures", "Curvature measures"


def _measures(text: str) -> tuple[str, ...]:
    """The measures named in ``text`` (comma-separated, or ``all``), checked."""
    if text.strip() == "all":
        return tuple(MEASURES)
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in MEASURES] or ([] if names else [text])
    if unknown:
        raise LandscapeError(f"--measures {text}: no measure named {', '.join(map(repr, unknown))} "
                             f"(the measures: {', '.join(MEASURES)}, or all)")
    return names


def sharpness(
    run: Run,
    measures: Annotated[str, Option(
        "Comma-separated measures to compute (and those they need), or all: "
        + ", ".join(MEASURES) + ".", metavar="NAMES")] = "all",
    rho: Annotated[float, Option("worst_case: radius of the L2 ball.", panel=_ASCENT)] = 0.05,
    rho_adaptive: Annotated[float, Option("worst_case_adaptive: radius of the ellipsoid "
                                          "‖δ/|θ|‖₂ ≤ ρ.", panel=_ASCENT)] = 0.5,
    epsilon: Annotated[float, Option("eps_sharpness: box half-width ε(|θ_i|+1).",
                                     panel=_ASCENT)] = 1e-3,
    steps: Annotated[int, Option("Gradient evaluations per ascent.", min=1, panel=_ASCENT)] = 20,
    restarts: Annotated[int, Option("Ascents from independent random starts (the best is kept).",
                                    min=1, panel=_ASCENT)] = 1,
    sigma: Annotated[float, Option("average_case: std of the Gaussian perturbation (and the "
                                   "PAC-Bayes search's first σ).", panel=_MC)] = 0.01,
    sigma_adaptive: Annotated[float, Option("average_case_adaptive: δ_i ~ N(0, σ²θ_i²).",
                                            panel=_MC)] = 0.1,
    samples: Annotated[int, Option("Perturbations per Monte Carlo estimate (antithetic pairs).",
                                   min=2, panel=_MC)] = 64,
    pac_bayes_target: Annotated[str, Option(
        "pac_bayes_sigma bounds the loss increase, or the accuracy drop (Jiang et al. 2020).",
        choices=("loss", "accuracy"), panel=_MC)] = "loss",
    pac_bayes_deviation: Annotated[float, Option(
        "pac_bayes_sigma: the most the loss may rise (or the accuracy drop).", panel=_MC)] = 0.1,
    lr: Annotated[float | None, Option("Training learning rate η: stability_lr then reports "
                                       "η·λ_max (≈ 2 at the edge of stability); the optimizer "
                                       "measures take it instead of the optimizer state's "
                                       "largest group learning rate (the groups keep their "
                                       "ratios).", panel=_CURVATURE)] = None,
    tol: Annotated[float, Option("lambda_max: Lanczos residual tolerance (relative).",
                                 panel=_CURVATURE)] = 1e-4,
    rtol: Annotated[float, Option("trace_per_param: stop at this relative standard error.",
                                  panel=_CURVATURE)] = 0.01,
    max_hvps: Annotated[int, Option("trace_per_param: most HVPs.", min=1, panel=_CURVATURE)] = 1000,
    bootstrap: Annotated[int, BOOTSTRAP] = 0,
    bootstrap_unit: Annotated[str, BOOTSTRAP_UNIT] = "batch",
):
    """Curvature (Lanczos, Hutch++), ascent (Auto-PGD) and Monte Carlo measures."""
    chosen = _measures(measures)
    for name, value in (("--rho", rho), ("--rho-adaptive", rho_adaptive), ("--epsilon", epsilon),
                        ("--sigma", sigma), ("--sigma-adaptive", sigma_adaptive),
                        ("--pac-bayes-deviation", pac_bayes_deviation), ("--tol", tol),
                        ("--rtol", rtol), *((("--lr", lr),) if lr is not None else ())):
        if not value > 0:
            raise LandscapeError(f"{name} {value}: must be greater than 0")
    from landscape_cli.analyses.sharpness import SharpnessOptions, with_needs
    from landscape_cli.analyses.sharpness import sharpness as measure

    options = SharpnessOptions(
        measures=chosen, rho=rho, rho_adaptive=rho_adaptive, epsilon=epsilon, sigma=sigma,
        sigma_adaptive=sigma_adaptive, samples=samples, steps=steps, restarts=restarts,
        pac_bayes_target=pac_bayes_target, pac_bayes_deviation=pac_bayes_deviation, lr=lr,
        tol=tol, rtol=rtol, max_hvps=max_hvps, seed=run.seed, bootstrap=bootstrap,
        bootstrap_unit=bootstrap_unit)
    from landscape_cli.estimate import CostEstimate
    from landscape_cli.linalg.so_far import SoFar

    optimizer = _optimizer_state(run, with_needs(chosen), explicit=measures.strip() != "all",
                                 lr=lr)

    total = len(with_needs(chosen))
    so_far = SoFar()
    estimate = CostEstimate("sharpness", run.notify, "--measures / --max-hvps to spend less")
    with run.progress("sharpness", total=total) as update, run.partial_on_interrupt(so_far):
        result = measure(run.engine, options, callback=lambda done, name: update(done, name),
                         so_far=so_far, estimate=estimate, optimizer=optimizer,
                         operator_on=run.operator_on)
        update(total, "")
    return result


def _optimizer_state(run: Run, names: list[str], *, explicit: bool, lr: float | None):
    """The checkpoint's optimizer state for the measures that read it (batch_sharpness, for its
    learning rate, without --lr), or why there is none. An optimizer the measures do not
    support is an error where they were asked for by name, else the reason they are null."""
    from landscape_cli.loading.optimizer_state import UnsupportedOptimizer

    if not (set(names) & set(OPTIMIZER_MEASURES) or ("batch_sharpness" in names and lr is None)):
        return "not read (no measure asked for needs it)"
    try:
        state = run.optimizer_state
    except UnsupportedOptimizer as exc:
        if explicit:
            raise
        return str(exc)
    return state if state is not None else ("the checkpoint holds no optimizer state (give one "
                                            "with --optimizer FILE)")


#: the measures a sharded model runs: curvature and ascents (whole-vector Monte Carlo does not)
SHARDED_MEASURES = ("lambda_max", "trace_per_param", "grad_norm", "stability_lr",
                    "eps_sharpness", "worst_case", "worst_case_adaptive")


def sharded(options: dict[str, Any]) -> str | None:
    """What a sharded model cannot run: the Monte Carlo measures."""
    chosen = _measures(options.get("measures", "all"))
    needed = {*chosen, *(need for name in chosen for need in NEEDS.get(name, ()))}
    others = [name for name in MEASURES if name in needed and name not in SHARDED_MEASURES]
    if not others:
        return None
    return (f"{', '.join(others)} do(es) not run on a sharded model; ask --measures "
            f"{','.join(SHARDED_MEASURES)} or some of them")


COMMAND = Command(
    name="sharpness",
    run=sharpness,
    help="Sharpness and flatness measures (λ_max, trace, worst-case, average-case, Keskar's ε, "
         "PAC-Bayes σ, ...), each with its definition, parameters and error bar; and stability "
         "as the checkpoint's optimizer sees it (preconditioned λ_max against its threshold, "
         "batch sharpness).",
    epilog="""Examples:

  landscape sharpness sample_checkpoints/mlp/seed0_epoch100.pt

  landscape sharpness ckpt.pt --measures worst_case,average_case --rho 0.1 --json

  landscape sharpness ckpt.pt --lr 0.1 --fail-if 'eta_lambda_max>2' --fail-if 'worst_case>0.5'

  landscape sharpness ckpt.pt --measures stability_ratio,batch_sharpness --fail-if 'stability_ratio>1'
""",
    result=SharpnessResult,
    sharded=sharded,
)
