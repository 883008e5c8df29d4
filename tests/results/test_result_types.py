"""Each result type is declared once (``landscape_cli.results``): its JSON keys, gate names,
schema model and table rows all follow from the declaration, and none of it needs torch."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from typing import ClassVar, get_args

import pytest
from pydantic import ValidationError

from landscape_cli.commands import result_types
from landscape_cli.linalg.trace import TraceEstimate
from landscape_cli.names import TRACE_METHODS as METHODS
from landscape_cli.report.gates import check_names, parse_gate
from landscape_cli.report.render import rows_of
from landscape_cli.report.schema import results_model
from landscape_cli.results.base import Result, internal, reported
from landscape_cli.results.critical import CriticalPointResult
from landscape_cli.results.density import DensityResult
from landscape_cli.results.inspect import InspectResult
from landscape_cli.results.interpolate import Barriers, InterpolateResult, Point
from landscape_cli.results.sharpness import MEASURES, SharpnessResult
from landscape_cli.results.sharpness import Measure as SharpnessMeasure
from landscape_cli.results.spectrum import SpectrumResult
from landscape_cli.results.trace import LayerTrace, Method, TraceResult

DENSITY = DensityResult(
    grid=[-1.0, 0.0, 1.0], values=[0.1, 0.5, 0.2], nodes=[[-0.5, 0.8]], weights=[[0.25, 0.75]],
    negative_mass=0.25, negative_threshold=0.03, negative_weight_ratio=0.2,
    negative_mass_stderr=None, sigma=0.1, runs=1, steps=2, lambda_min=-0.5, lambda_max=0.8,
    reorthogonalized=True, notes=["a density note"])
SPECTRUM = SpectrumResult(
    top_eigenvalues=[3.0, 2.0], top_residuals=[1e-6, 2e-6], top_converged=[True, False],
    bottom_eigenvalues=[-0.5], bottom_residuals=[3e-6], bottom_converged=[True],
    lanczos_steps=12, tol=1e-4, residual_floor=1e-9, budget_spent=True, density=DENSITY)
ESTIMATE = TraceEstimate(trace=4.0, stderr=0.04, ci95=(3.9, 4.1), probes=16, matvecs=40,
                         method="hutchpp", sketch=8, converged=True)
LAYER = LayerTrace(name="fc", n_params=8, trace=4.0, stderr=0.04, ci95=(3.9, 4.1),
                   trace_per_param=0.5, hvps=40)
TRACE = TraceResult(ESTIMATE, 8, 0.01, per_layer=[LAYER])  # positional, as an interrupted run builds it
CRITICAL = CriticalPointResult(
    verdict="saddle", grad_norm=1e-5, grad_threshold=1e-3, theta_norm=2.0, lambda_min=-0.5,
    lambda_min_residual=1e-6, lambda_max=3.0, lambda_max_residual=2e-6, eig_threshold=3e-3,
    lanczos_converged=True, density=DENSITY, evidence=["the test", "the numbers"])
TENSOR = {"name": "fc.weight", "shape": [2, 4], "dtype": "float32", "numel": 8, "role": "parameter"}
INSPECT = InspectResult(format="state_dict", key=None, tensors=[TENSOR], n_params=8, n_buffers=0,
                        n_tensors=1, detected_prefix=None, unsafe_globals=[])

DENSITY_JSON = {
    "grid": [-1.0, 0.0, 1.0], "values": [0.1, 0.5, 0.2], "nodes": [[-0.5, 0.8]],
    "weights": [[0.25, 0.75]], "negative_mass": 0.25, "negative_threshold": 0.03,
    "negative_weight_ratio": 0.2, "negative_mass_stderr": None, "sigma": 0.1, "runs": 1,
    "steps": 2, "lambda_min": -0.5, "lambda_max": 0.8, "reorthogonalized": True}

#: type name → (result, its exact ``results``, its exact ``scalars``, its GATES, its rows)
CASES = {
    "spectrum": (
        SPECTRUM,
        {"top_eigenvalues": [3.0, 2.0], "top_residuals": [1e-6, 2e-6], "top_converged": [True, False],
         "bottom_eigenvalues": [-0.5], "bottom_residuals": [3e-6], "bottom_converged": [True],
         "lanczos_steps": 12, "tol": 1e-4, "residual_floor": 1e-9, "density": DENSITY_JSON,
         "condition_number_note": "λ_min = -0.5 is not above its residual 3e-06: the Hessian "
                                  "is not positive definite as far as measured, so "
                                  "λ_max/λ_min is no condition number"},
        {"lambda_max": 3.0, "top_1": 3.0, "top_2": 2.0, "lambda_min": -0.5, "bottom_1": -0.5,
         "condition_number": None, "negative_mass": 0.25, "negative_weight_ratio": 0.2},
        ("heterogeneity", "lambda_max", "top_N", "lambda_min", "bottom_N", "condition_number",
         "negative_mass", "negative_weight_ratio"),
        [{"end": "top", "rank": 1, "eigenvalue": 3.0, "residual": 1e-6, "converged": True},
         {"end": "top", "rank": 2, "eigenvalue": 2.0, "residual": 2e-6, "converged": False},
         {"end": "bottom", "rank": 1, "eigenvalue": -0.5, "residual": 3e-6, "converged": True}],
    ),
    "trace": (
        TRACE,
        {"trace": 4.0, "stderr": 0.04, "ci95": [3.9, 4.1], "trace_per_param": 0.5, "n_params": 8,
         "method": "hutchpp", "probes": 16, "sketch": 8, "hvps": 40, "converged": True,
         "rtol": 0.01,
         "per_layer": [{"name": "fc", "n_params": 8, "trace": 4.0, "stderr": 0.04, "ci95": [3.9, 4.1],
                        "trace_per_param": 0.5, "hvps": 40}]},
        {"trace": 4.0, "stderr": 0.04, "trace_per_param": 0.5, "relative_stderr": 0.01},
        ("trace", "stderr", "trace_per_param", "relative_stderr"),
        [{"block": "total (hutchpp)", "n_params": 8, "trace": 4.0, "stderr": 0.04, "ci95_low": 3.9,
          "ci95_high": 4.1, "trace_per_param": 0.5, "hvps": 40},
         {"block": "fc", "n_params": 8, "trace": 4.0, "stderr": 0.04, "ci95_low": 3.9,
          "ci95_high": 4.1, "trace_per_param": 0.5, "hvps": 40}],
    ),
    "classify-critical-point": (
        CRITICAL,
        {"verdict": "saddle", "grad_norm": 1e-5, "lambda_min": -0.5, "lambda_max": 3.0,
         "negative_fraction": 0.25, "evidence": ["the test", "the numbers"],
         "condition_number": None, "condition_number_error": None,
         "condition_number_note": "the verdict is saddle, not a minimum: λ_max/λ_min is a "
                                  "condition number only where the Hessian is positive definite",
         "lambda_min_residual": 1e-6, "lambda_max_residual": 2e-6, "grad_threshold": 1e-3,
         "eig_threshold": 3e-3, "theta_norm": 2.0, "lanczos_converged": True,
         "negative_weight_ratio": 0.2, "negative_threshold": 0.03},
        {"grad_norm": 1e-5, "lambda_min": -0.5, "lambda_max": 3.0, "negative_fraction": 0.25,
         "condition_number": None},
        ("grad_norm", "lambda_min", "lambda_max", "negative_fraction", "condition_number"),
        [{"verdict": "saddle", "grad_norm": 1e-5, "lambda_min": -0.5, "lambda_max": 3.0,
          "negative_fraction": 0.25}],
    ),
    "inspect": (
        INSPECT,
        {"format": "state_dict", "key": None, "n_tensors": 1, "n_params": 8, "n_buffers": 0,
         "detected_prefix": None, "unsafe_globals": [], "loadable": True, "metadata": {},
         "tensors": [TENSOR]},
        {"n_tensors": 1, "n_params": 8},
        ("n_tensors", "n_params"),
        [TENSOR],
    ),
    "interpolate": (
        InterpolateResult(path="line", checkpoints=["a.pt", "b.pt"], recalibrate_bn=False,
                          barriers=Barriers(0.1, 0.2, 0.3, 0.25, 0.5, error_barrier=0.05),
                          points=[Point(0.0, 0.1, 1.0), Point(1.0, 0.2, 0.9)]),
        {"path": "line", "checkpoints": ["a.pt", "b.pt"], "recalibrate_bn": False,
         "points": [{"alpha": 0.0, "loss": 0.1, "accuracy": 1.0},
                    {"alpha": 1.0, "loss": 0.2, "accuracy": 0.9}],
         "loss_a": 0.1, "loss_b": 0.2, "barrier": 0.3, "barrier_mid_ends": 0.25, "alpha_max": 0.5,
         "error_barrier": 0.05},
        {"loss_a": 0.1, "loss_b": 0.2, "barrier": 0.3, "barrier_mid_ends": 0.25,
         "error_barrier": 0.05},
        ("loss_a", "loss_b", "barrier", "barrier_mid_ends", "error_barrier", "eval_barrier",
         "barrier_unaligned", "max_barrier"),
        [{"alpha": 0.0, "loss": 0.1, "accuracy": 1.0}, {"alpha": 1.0, "loss": 0.2, "accuracy": 0.9}],
    ),
    "sharpness": (
        SharpnessResult(measures={
            "worst_case": SharpnessMeasure(0.02, False, "max", converged=True, rho=0.05, steps=20,
                                          restarts=1, grad_evals=20),
            "pac_bayes_sigma": SharpnessMeasure(0.2, False, "σ", stderr=0.01, flatness=25.0,
                                               sigma_magnitude=0.4, flatness_magnitude=6.25)}),
        {"measures": {
            "worst_case": {"value": 0.02, "scale_invariant": False, "definition": "max",
                           "converged": True, "rho": 0.05, "steps": 20, "restarts": 1,
                           "grad_evals": 20},
            "pac_bayes_sigma": {"value": 0.2, "scale_invariant": False, "definition": "σ",
                                "stderr": 0.01, "flatness": 25.0, "sigma_magnitude": 0.4,
                                "flatness_magnitude": 6.25}}},
        {"worst_case": 0.02, "pac_bayes_sigma": 0.2, "flatness": 25.0, "sigma_magnitude": 0.4,
         "flatness_magnitude": 6.25},
        (*MEASURES, "flatness", "sigma_magnitude", "flatness_magnitude", "eta_lambda_max"),
        [{"measure": "worst_case", "value": 0.02, "stderr": None, "converged": True,
          "scale_invariant": False},
         {"measure": "pac_bayes_sigma", "value": 0.2, "stderr": 0.01, "converged": None,
          "scale_invariant": False}],
    ),
}



class Measure(Result):
    """A result nested in a dict (as a sharpness measure would be): not a section."""

    value: float = reported(required=True)
    scale_invariant: bool = reported(required=True)
    stderr: float | None = reported(omit_none=True, default=None)


class Measures(Result):
    """Gate numbers named by the dict's keys, through the derived hook."""

    DERIVED_GATES: ClassVar[tuple[str, ...]] = ("lambda_max", "eps_sharpness")

    measures: dict[str, Measure] = reported(required=True)
    parts: list[Measure] = reported(default_factory=list)

    def derived_scalars(self) -> dict[str, float]:
        return {name: measure.value for name, measure in self.measures.items()}


#: The keys the schema required before the results were declared (DESIGN §6): still required.
CONTRACT = {
    "spectrum": {"top_eigenvalues", "top_residuals", "top_converged"},
    "trace": {"trace", "stderr", "ci95", "trace_per_param", "method", "probes"},
    "classify-critical-point": {"verdict", "grad_norm", "lambda_min", "lambda_max",
                                "negative_fraction", "evidence"},
    "inspect": {"format", "n_tensors", "n_params", "unsafe_globals", "tensors"},
    "sharpness": {"measures"},
    "interpolate": {"path", "checkpoints"},
}


def test_the_registry_holds_each_command_s_result_type():
    assert set(result_types()) == set(CASES)
    assert all(type(CASES[command][0]) is kind for command, kind in result_types().items())


@pytest.mark.parametrize("command", CASES)
def test_results_are_the_exact_dict_in_declaration_order(command):
    result, expected, *_ = CASES[command]
    assert list(result.results().items()) == list(expected.items())
    json.dumps(result.results(), allow_nan=False)  # plain JSON: no tuples or result objects


@pytest.mark.parametrize("command", CASES)
def test_scalars_are_the_gate_numbers(command):
    result, _, scalars, *_ = CASES[command]
    assert result.scalars() == scalars


@pytest.mark.parametrize("command", CASES)
def test_gates_are_the_gate_keys_then_families_then_sections(command):
    result, _, scalars, gates, _ = CASES[command]
    kind = type(result)
    assert gates == kind.GATES
    own = [k.name for k in kind.KEYS if k.gate]
    assert list(gates[:len(own)]) == own and set(kind.DERIVED_GATES) <= set(gates)
    check_names([parse_gate(f"{name}>0") for name in scalars], kind.GATES)  # none unknown


@pytest.mark.parametrize("command", CASES)
def test_results_keys_are_the_schema_model_s_properties(command):
    result, expected, *_ = CASES[command]
    model = results_model(type(result))
    # the case's keys, in the declared order (a case may leave optional sections out)
    assert [k for k in model.model_fields if k in expected] == list(expected)
    assert CONTRACT[command] <= {name for name, f in model.model_fields.items() if f.is_required()}
    model.model_validate(result.results())


@pytest.mark.parametrize("command", CASES)
def test_rows_are_read_from_the_document(command):
    result, *_, rows = CASES[command]
    doc = json.loads(json.dumps({"command": command, "results": result.results()}))
    found = rows_of(doc, result_types()[command])
    assert [list(row.items()) for row in found] == [list(row.items()) for row in rows]


def test_a_command_without_a_result_type_shows_its_results_as_one_row():
    assert rows_of({"command": "future", "results": {"a": 1, "b": [2]}}) == [{"a": 1, "b": [2]}]


def test_absent_sections_are_left_out_and_their_gates_with_them():
    bare = replace(SPECTRUM, bottom_eigenvalues=None, bottom_residuals=None,
                   bottom_converged=None, density=None)
    assert "bottom_eigenvalues" not in bare.results() and "density" not in bare.results()
    assert set(bare.scalars()) == {"lambda_max", "top_1", "top_2"}
    assert [row["end"] for row in rows_of({"command": "spectrum", "results": bare.results()},
                                          SpectrumResult)] == [
        "top", "top"]
    results_model(SpectrumResult).model_validate(bare.results())


def test_critical_point_without_a_density_writes_a_null_fraction_and_no_gate_for_it():
    result = replace(CRITICAL, density=None)
    out = result.results()
    assert out["negative_fraction"] is None
    assert "negative_weight_ratio" not in out and "negative_threshold" not in out
    assert "negative_fraction" not in result.scalars()
    results_model(CriticalPointResult).model_validate(out)


def test_an_interrupted_trace_keeps_its_estimate_and_reads_its_keys_from_it():
    result = TraceResult(replace(ESTIMATE, converged=False), 8, 0.01, notes=["interrupted"])
    assert result.estimate.trace == 4.0 and "per_layer" not in result.results()
    assert result.warnings()[0] == "interrupted" and "within 40 HVPs" in result.warnings()[1]


def test_the_method_literal_is_the_estimators():
    assert get_args(Method) == METHODS


def test_a_field_without_a_declaration_is_refused():
    with pytest.raises(TypeError, match=r"Undeclared\.value: declare it"):
        class Undeclared(Result):
            value: float

    class Declared(Result):
        value: float = reported(gate=True)
        note: str = internal(default="")

    assert Declared.GATES == ("value",) and Declared(1.5).results() == {"value": 1.5}


def test_results_nested_in_a_dict_or_a_list_are_written_by_their_keys_but_are_not_sections():
    result = Measures({"lambda_max": Measure(3.0, False), "eps_sharpness": Measure(0.1, True, 0.01)},
                      parts=[Measure(1.0, False)])
    assert result.results() == {
        "measures": {"lambda_max": {"value": 3.0, "scale_invariant": False},
                     "eps_sharpness": {"value": 0.1, "scale_invariant": True, "stderr": 0.01}},
        "parts": [{"value": 1.0, "scale_invariant": False}]}
    assert Measures.GATES == ("lambda_max", "eps_sharpness")
    assert result.scalars() == {"lambda_max": 3.0, "eps_sharpness": 0.1}
    model = results_model(Measures)
    model.model_validate(result.results())
    with pytest.raises(ValidationError, match="scale_invariant"):
        model.model_validate({"measures": {"lambda_max": {"value": 3.0}}})


def test_results_schema_and_rendering_import_without_torch():
    code = ("import landscape_cli.results, landscape_cli.report.schema, landscape_cli.report.render; "
            "import sys; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
