"""`landscape interpolate` (issue 20, "Must show"): every number checked against an independent
float64 reference computed here (a plain loop over the data batches with ``functional_call``),
or against a closed form.

* lines and Bézier curves between the sample MLP checkpoints, point by point, with the
  barriers recomputed from the reference losses;
* the barriers on a constructed pair whose loss along the line is a known cubic;
* planes through three checkpoints (a constructed third one whose coordinates are grid nodes,
  and the sample triple against a Gram-Schmidt done here) and around one checkpoint (centre,
  a corner from the saved directions, filter normalisation, --save/--load-directions);
* BatchNorm recalibration on the sample BN CNN against a deepcopy accumulating with
  ``momentum=None``;
* many checkpoints (the barrier matrix against the two-checkpoint runs, globs in natural order);
* ``eval_data`` curves; bad input (exit 2, one line); ``--plot`` and ``--fail-if``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from helpers.adversarial import assert_one_error, write_config
from helpers.runners import invoke
from helpers.samples import CNN_CKPT, CONFIGS, DIGITS, ROOT, digits, loaded
from safetensors.torch import load_file
from torch import nn

import landscape_cli
from landscape_cli.engine.passes import Passes

MLP_DIR = ROOT / "sample_checkpoints" / "mlp"
A = MLP_DIR / "seed0_epoch100.pt"
B = MLP_DIR / "seed1_epoch100.pt"
C = MLP_DIR / "seed0_epoch010.pt"
MLP_CONFIG = CONFIGS / "mlp.yaml"
CNN_CONFIG = CONFIGS / "cnn_bn.yaml"
N = 300
SET = [f"data.max_samples={N}"]
BATCH = 256  # the configs' data.batch_size
MODELS = ROOT / "sample_checkpoints" / "models.py"


# ----------------------------------------------------------------------------- reference


def _models():
    spec = importlib.util.spec_from_file_location("sample_models_for_interpolate", MODELS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SAMPLE = _models()


def state_of(path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict (a plain one, or a training-loop dict's model_state_dict), with
    floating tensors in float64."""
    found = torch.load(path, map_location="cpu", weights_only=True)
    if "model_state_dict" in found:
        found = found["model_state_dict"]
    return {k: v.double() if v.is_floating_point() else v for k, v in found.items()}


def mix(weights, states) -> dict[str, torch.Tensor]:
    """Σ w_j state_j over the floating tensors (integer counters from the first)."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = sum(float(w) * s[key] for w, s in zip(weights, states))
        else:
            out[key] = first
    return out


def reference(model: nn.Module, state: dict[str, torch.Tensor], x, y, batch: int = BATCH):
    """The dataset loss (Σ CE(reduction=sum)/N) and accuracy, one batch at a time."""
    total, hits = torch.zeros((), dtype=torch.float64), 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = torch.func.functional_call(model, state, (x[i:i + batch],))
            total += nn.functional.cross_entropy(out, y[i:i + batch], reduction="sum")
            hits += int((out.argmax(dim=1) == y[i:i + batch]).sum())
    return float(total) / len(x), hits / len(x)


def mlp() -> nn.Module:
    return SAMPLE.make_mlp(32).double().eval()


def cnn() -> nn.Module:
    return SAMPLE.make_cnn(8).double().eval()


def interpolate(checkpoints, config=MLP_CONFIG, **options):
    return landscape_cli.analyze("interpolate", [str(c) for c in checkpoints], config=str(config),
                                 set=options.pop("set", SET), dtype="float64", device="cpu",
                                 **options)


def barriers_of(alphas, losses, accuracies=None):
    """(barrier, barrier_mid_ends, alpha_max, error_barrier) of a path from its points."""
    inside = [(a, loss) for a, loss in zip(alphas, losses) if 0 <= a <= 1]
    ends = dict(inside)
    la, lb = ends[0.0], ends[1.0]
    gaps = [(loss - ((1 - a) * la + a * lb), a) for a, loss in inside]
    barrier, alpha_max = max(gaps)
    mid = max(loss for _, loss in inside) - (la + lb) / 2
    error = None
    if accuracies is not None:
        errs = {a: 1 - acc for a, acc in zip(alphas, accuracies) if 0 <= a <= 1}
        error = max(e - ((1 - a) * errs[0.0] + a * errs[1.0]) for a, e in errs.items())
    return barrier, mid, alpha_max, error


def close(a, b, tol=1e-6):
    return a == pytest.approx(b, rel=tol, abs=tol * 1e-3)


def flat(problem, state) -> torch.Tensor:
    return torch.cat([state[n].reshape(-1).double() for n in problem.names])


# ----------------------------------------------------------------------------- 1. lines, curves


def test_line_matches_reference_at_every_point():
    alphas = [-0.25 + 1.5 * i / 6 for i in range(7)]
    report = interpolate([A, B], alphas="-0.25:1.25:7")
    res = report.results
    assert res["path"] == "line" and res["checkpoints"] == [str(A), str(B)]
    assert [p["alpha"] for p in res["points"]] == pytest.approx(alphas, abs=1e-12)
    x, y = digits(N)
    model, sa, sb = mlp(), state_of(A), state_of(B)
    losses, accs = [], []
    for point in res["points"]:
        a = point["alpha"]
        loss, acc = reference(model, mix([1 - a, a], [sa, sb]), x, y)
        assert close(point["loss"], loss), (a, point["loss"], loss)
        assert point["accuracy"] == pytest.approx(acc, abs=1e-12), (a, point["accuracy"], acc)
        losses.append(loss)
        accs.append(acc)
    ref_a, acc_a = reference(model, sa, x, y)
    ref_b, _ = reference(model, sb, x, y)
    assert close(res["loss_a"], ref_a) and close(res["loss_b"], ref_b)
    assert res["loss_a"] == res["points"][1]["loss"] and res["loss_b"] == res["points"][5]["loss"]
    assert close(res["loss"], ref_a) and res["accuracy"] == pytest.approx(acc_a, abs=1e-12)
    barrier, mid, alpha_max, error = barriers_of([p["alpha"] for p in res["points"]], losses, accs)
    assert close(res["barrier"], barrier) and close(res["barrier_mid_ends"], mid)
    assert res["alpha_max"] == pytest.approx(alpha_max, abs=1e-12)
    assert res["error_barrier"] == pytest.approx(error, abs=1e-12)
    assert res["barrier"] > 0.01  # two seeds: a real barrier, so the test can tell


def test_bezier_curve_matches_reference():
    report = interpolate([A, B], via=str(C), alphas="-0.25:1.25:7")
    res = report.results
    assert res["path"] == "curve" and res["via"] == str(C)
    x, y = digits(N)
    model, states = mlp(), [state_of(A), state_of(B), state_of(C)]
    losses = []
    for point in res["points"]:
        t = point["alpha"]
        loss, acc = reference(model, mix([(1 - t) ** 2, t ** 2, 2 * t * (1 - t)], states), x, y)
        assert close(point["loss"], loss), (t, point["loss"], loss)
        assert point["accuracy"] == pytest.approx(acc, abs=1e-12)
        losses.append(loss)
    assert close(res["loss_a"], reference(model, states[0], x, y)[0])
    assert close(res["loss_b"], reference(model, states[1], x, y)[0])
    barrier, mid, alpha_max, _ = barriers_of([p["alpha"] for p in res["points"]], losses)
    assert close(res["barrier"], barrier) and close(res["barrier_mid_ends"], mid)
    assert res["alpha_max"] == pytest.approx(alpha_max, abs=1e-12)
    # the curve is not the line: at t = 0.5 the control checkpoint weighs ½
    line = reference(model, mix([0.5, 0.5], states[:2]), x, y)[0]
    assert abs(res["points"][3]["loss"] - line) > 1e-3


# ----------------------------------------------------------------------------- 2. exact barrier

POLY = '''
import torch
from torch import nn

A_W = (0.5, -1.0)
B_W = (2.5, 3.0)
L_A, L_B, K = 1.0, 2.0, 3.0


class Poly(nn.Module):
    """Along the line from A_W to B_W, with a the position (0 at A_W, 1 at B_W),
    L = L_A + (L_B - L_A) a + K a^2 (1 - a)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def forward(self, x):
        a_w = torch.tensor(A_W, dtype=self.w.dtype)
        d = torch.tensor(B_W, dtype=self.w.dtype) - a_w
        a = ((self.w - a_w) * d).sum() / (d * d).sum()
        return L_A + (L_B - L_A) * a + K * a * a * (1 - a) + 0 * x.sum()


def make_model():
    return Poly()


def make_data(n=10):
    return torch.zeros(n, 1, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)


def loss(model, batch):
    return model(batch[0])
'''


def test_barrier_exact_on_a_known_cubic(tmp_path):
    (tmp_path / "polyline.py").write_text(POLY)
    config = tmp_path / "poly.yaml"
    config.write_text(
        "model:\n  factory: polyline:make_model\n"
        "data:\n  factory: polyline:make_data\n  batch_size: 4\n"
        "loss:\n  fn: polyline:loss\n"
        f"python_path: [{tmp_path}]\ndtype: float64\ndevice: cpu\n")
    paths = []
    for name, w in (("a.pt", (0.5, -1.0)), ("b.pt", (2.5, 3.0))):
        torch.save({"w": torch.tensor(w, dtype=torch.float64)}, tmp_path / name)
        paths.append(tmp_path / name)
    # α = -1 … 2 in steps of 1/6: 0, 2/3, 5/6 and 1 are grid points; outside [0, 1] the cubic
    # is larger than anywhere inside (L(-1) = 6), so a barrier that looked there would show it
    report = landscape_cli.analyze("interpolate", [str(p) for p in paths], config=str(config),
                                   set=[], alphas="-1:2:19")
    res = report.results

    def L(a):  # the loss along the line
        return 1.0 + a + 3.0 * a * a * (1 - a)

    alphas = [p["alpha"] for p in res["points"]]
    assert alphas == pytest.approx([-1 + 3 * i / 18 for i in range(19)], abs=1e-12)
    for p in res["points"]:
        assert p["loss"] == pytest.approx(L(p["alpha"]), abs=1e-9), p
        assert "accuracy" not in p
    assert res["loss_a"] == pytest.approx(1.0, abs=1e-9)
    assert res["loss_b"] == pytest.approx(2.0, abs=1e-9)
    # Frankle et al.: max 3α²(1−α) over [0, 1], at α = 2/3 (a grid point): 4/9
    assert res["barrier"] == pytest.approx(4 / 9, abs=1e-9)
    assert res["alpha_max"] == pytest.approx(2 / 3, abs=1e-9)
    # Git Re-Basin: max L over the grid in [0, 1] (at α = 5/6, not 2/3) minus ½(L_A + L_B)
    assert res["barrier_mid_ends"] == pytest.approx(L(5 / 6) - 1.5, abs=1e-9)
    assert "error_barrier" not in res


# ----------------------------------------------------------------------------- 3. planes


def test_plane_through_three_checkpoints_hits_each_at_its_coordinates(tmp_path):
    """A third checkpoint built at (0.5, 1) of the plane of A and B: on the grid -1:2:13 (step
    0.25) all three are nodes, where the grid's loss must be each checkpoint's own."""
    sa, sb = state_of(A), state_of(B)
    problem = loaded("mlp.yaml", A, *SET).problem
    ta, tb = flat(problem, sa), flat(problem, sb)
    u = tb - ta
    g = torch.randn(len(u), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    r = g - (g @ u) / (u @ u) * u
    r = r * (u.norm() / r.norm())
    tc = ta + 0.5 * u + 1.0 * r
    sc = {**sa, **problem.unflatten(tc, prefix="")}
    c_path = tmp_path / "built_c.pt"
    torch.save(sc, c_path)
    report = interpolate([A, B, c_path], plane=True, grid="-1:2:13")
    plane = report.results["plane"]
    assert report.results["path"] == "plane" and plane["directions"] == "checkpoints"
    grid = [-1 + 3 * i / 12 for i in range(13)]
    assert plane["x"] == pytest.approx(grid, abs=1e-12) and plane["y"] == pytest.approx(grid, abs=1e-12)
    coords = plane["coordinates"]
    assert coords[str(A)] == pytest.approx((0.0, 0.0), abs=1e-9)
    assert coords[str(B)] == pytest.approx((1.0, 0.0), abs=1e-9)
    assert coords[str(c_path)] == pytest.approx((0.5, 1.0), abs=1e-9)
    x, y = digits(N)
    model = mlp()
    for state, (j, i) in ((sa, (4, 4)), (sb, (8, 4)), (sc, (6, 8))):
        loss, acc = reference(model, state, x, y)
        assert close(plane["loss"][i][j], loss), (i, j, plane["loss"][i][j], loss)
        assert plane["accuracy"][i][j] == pytest.approx(acc, abs=1e-12)
    # two corners, off every checkpoint: loss[i][j] is at A + x_j·u + y_i·v
    for i, j in ((0, 12), (12, 0)):
        theta = ta + plane["x"][j] * u + plane["y"][i] * r
        loss, _ = reference(model, {**sa, **problem.unflatten(theta, prefix="")}, x, y)
        assert close(plane["loss"][i][j], loss), (i, j, plane["loss"][i][j], loss)


def test_plane_through_sample_checkpoints_coordinates():
    """Three sample checkpoints: A and B are the nodes (0, 0), (1, 0) of the grid 0:1:2; C's
    reported coordinates, taken in a Gram-Schmidt basis built here, give back C's weights and
    loss."""
    report = interpolate([A, B, C], plane=True, grid="0:1:2")
    plane = report.results["plane"]
    problem = loaded("mlp.yaml", A, *SET).problem
    sa, sb, sc = state_of(A), state_of(B), state_of(C)
    ta, tb, tc = (flat(problem, s) for s in (sa, sb, sc))
    u = tb - ta
    w = tc - ta
    r = w - (w @ u) / (u @ u) * u
    v = r * (u.norm() / r.norm())
    xc, yc = plane["coordinates"][str(C)]
    assert xc == pytest.approx(float((w @ u) / (u @ u)), rel=1e-9)
    assert yc == pytest.approx(float((w @ v) / (v @ v)), rel=1e-9)
    rebuilt = ta + xc * u + yc * v
    assert torch.allclose(rebuilt, tc, rtol=0, atol=1e-9 * float(tc.abs().max()))
    x, y = digits(N)
    model = mlp()
    ref_c, _ = reference(model, {**sa, **problem.unflatten(rebuilt, prefix="")}, x, y)
    assert close(ref_c, reference(model, sc, x, y)[0])
    assert close(plane["loss"][0][0], reference(model, sa, x, y)[0])
    assert close(plane["loss"][0][1], reference(model, sb, x, y)[0])
    # (x, y) = (1, 1): A + u + v
    ref_11, _ = reference(model, {**sa, **problem.unflatten(ta + u + v, prefix="")}, x, y)
    assert close(plane["loss"][1][1], ref_11)


def test_plane_around_one_checkpoint_and_saved_directions(tmp_path):
    saved = tmp_path / "dirs.safetensors"
    first = interpolate([A], plane=True, grid="-1:1:5", save_directions=saved)
    plane = first.results["plane"]
    assert plane["directions"] == "random" and plane["normalize"] == "filter"
    assert plane["ignore"] == "biasbn" and plane["coordinates"] == {str(A): [0.0, 0.0]}
    assert plane["x"] == pytest.approx([-1, -0.5, 0, 0.5, 1], abs=1e-12)
    x, y = digits(N)
    model, sa = mlp(), state_of(A)
    loss_a, acc_a = reference(model, sa, x, y)
    assert close(plane["loss"][2][2], loss_a) and plane["accuracy"][2][2] == pytest.approx(acc_a)
    # the saved directions: the origin is A, each filter (row) of a weight matrix has its
    # weight row's norm, the biases are exactly zero
    problem = loaded("mlp.yaml", A, *SET).problem
    tensors = load_file(str(saved))
    ta = flat(problem, sa)
    assert torch.equal(tensors["origin"].double(), ta)
    for key in ("u", "v"):
        pieces = problem.unflatten(tensors[key].double(), prefix="")
        for name, d in pieces.items():
            if d.dim() >= 2:
                assert torch.allclose(d.flatten(1).norm(dim=1), sa[name].flatten(1).norm(dim=1),
                                      rtol=1e-6, atol=0), (key, name)
            else:
                assert torch.count_nonzero(d) == 0, (key, name)
    assert not torch.allclose(tensors["u"], tensors["v"])
    # node (x, y) = (1, -1) is loss[0][4]: A + u − v
    corner = ta + tensors["u"].double() - tensors["v"].double()
    ref, _ = reference(model, {**sa, **problem.unflatten(corner, prefix="")}, x, y)
    assert close(plane["loss"][0][4], ref), (plane["loss"][0][4], ref)
    # loaded back (under another seed, which would draw other directions): the same plane
    again = interpolate([A], plane=True, grid="-1:1:5", load_directions=saved, seed=5)
    assert again.results["plane"]["loss"] == plane["loss"]
    other = interpolate([A], plane=True, grid="-1:1:5", seed=5)
    assert other.results["plane"]["loss"] != plane["loss"]


# ----------------------------------------------------------------------------- 4. BatchNorm


def recalibrated_reference(state, x, batch: int = BATCH) -> dict[str, torch.Tensor]:
    """A fresh model copy at ``state``, its BatchNorms reset and accumulating in train mode with
    momentum=None over the batches: the exact cumulative average."""
    model = cnn()
    model.load_state_dict(state)
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches" in k}


@pytest.fixture(scope="module")
def bn_pair(tmp_path_factory):
    """The sample BN CNN and a perturbed copy (weights and running statistics)."""
    folder = tmp_path_factory.mktemp("bn")
    found = torch.load(CNN_CKPT, map_location="cpu", weights_only=True)
    state = found["model_state_dict"]
    g = torch.Generator().manual_seed(11)
    other = {}
    for key, value in state.items():
        if "running_var" in key:
            other[key] = value * 1.5
        elif value.is_floating_point():
            noise = torch.randn(value.shape, generator=g, dtype=value.dtype)
            other[key] = value + 0.3 * value.abs().mean() * noise
        else:
            other[key] = value
    path = folder / "perturbed.pt"
    torch.save({"epoch": 1, "model_state_dict": other}, path)
    return CNN_CKPT, path


def test_recalibrate_bn_on_the_bn_cnn(bn_pair):
    a_path, b_path = bn_pair
    plain = interpolate([a_path, b_path], config=CNN_CONFIG, alphas="0:1:5")
    recal = interpolate([a_path, b_path], config=CNN_CONFIG, alphas="0:1:5", recalibrate_bn=True)
    x, y = digits(N)
    model = cnn()
    sa, sb = state_of(a_path), state_of(b_path)
    # without: the endpoints are the checkpoints with their own statistics, the points use the
    # interpolated statistics, and a warning points at --recalibrate-bn
    res = plain.results
    assert res["recalibrate_bn"] is False
    assert close(res["loss_a"], reference(model, sa, x, y)[0])
    assert close(res["loss_b"], reference(model, sb, x, y)[0])
    for p in res["points"]:
        a = p["alpha"]
        assert close(p["loss"], reference(model, mix([1 - a, a], [sa, sb]), x, y)[0]), p
    assert any("--recalibrate-bn" in w for w in plain.warnings), plain.warnings
    # with: the report says the endpoints were recalibrated too, and every point (ends
    # included) is evaluated with statistics from a train-mode cumulative pass at its weights
    rres = recal.results
    assert rres["recalibrate_bn"] is True
    assert any("recomputed" in w and "endpoints" in w for w in recal.warnings), recal.warnings
    for p in rres["points"]:
        a = p["alpha"]
        weights = mix([1 - a, a], [sa, sb])
        stats = recalibrated_reference(weights, x)
        loss, acc = reference(model, {**weights, **stats}, x, y)
        assert close(p["loss"], loss), (a, p["loss"], loss)
        assert p["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert rres["loss_a"] == rres["points"][0]["loss"]
    # the two curves differ inside (and at B, whose saved statistics were perturbed)
    gaps = [abs(p["loss"] - q["loss"]) for p, q in zip(res["points"], rres["points"])]
    assert max(gaps[1:]) > 1e-3, gaps


def test_recalibrate_bn_statistics_at_a_point_match_cumulative_pass(bn_pair):
    a_path, b_path = bn_pair
    problem = loaded("cnn_bn.yaml", a_path, *SET).problem
    sa, sb = state_of(a_path), state_of(b_path)
    theta = 0.4 * flat(problem, sa) + 0.6 * flat(problem, sb)
    got = Passes(problem).recalibrate_bn(theta)
    weights = {**mix([0.4, 0.6], [sa, sb]), **problem.unflatten(theta, prefix="")}
    x, _ = digits(N)
    want = recalibrated_reference(weights, x)
    assert set(got) == set(want)
    for key, value in want.items():
        if value.is_floating_point():
            assert torch.allclose(got[key].double(), value, rtol=1e-6, atol=1e-9), key
        else:
            assert int(got[key]) == int(value) == -(-N // BATCH), key
    # and not the checkpoints' own statistics
    assert not torch.allclose(got["features.0.1.running_mean"].double(),
                              weights["features.0.1.running_mean"], atol=1e-4)


def test_extrapolated_batchnorm_with_negative_variance_has_no_accuracy(bn_pair):
    """B's running variances are 1.5× A's, so on the line they are (1 + α/2)·var_A: negative
    for α < −2, where BatchNorm's √(var + ε) is NaN. Those points have a null loss, no accuracy
    (not what NaN logits score) and a warning naming the cause and --recalibrate-bn; the others
    match the float64 reference, accuracy included."""
    a_path, b_path = bn_pair
    alphas = [-3.0, -1.5, 0.0, 1.5]
    report = interpolate([a_path, b_path], config=CNN_CONFIG, alphas="-3:1.5:4")
    x, y = digits(N)
    model, sa, sb = cnn(), state_of(a_path), state_of(b_path)
    points = report.results["points"]
    assert [p["alpha"] for p in points] == alphas
    negative = [a for a in alphas
                if min(float(mix([1 - a, a], [sa, sb])[k].min()) for k in sa if "running_var" in k) < 0]
    assert negative == [-3.0]
    for p in points:
        loss, accuracy = reference(model, mix([1 - p["alpha"], p["alpha"]], [sa, sb]), x, y)
        if p["alpha"] in negative:
            assert np.isnan(loss) and p["loss"] is None and p.get("accuracy") is None, p
        else:
            assert close(p["loss"], loss) and p["accuracy"] == pytest.approx(accuracy, abs=1e-12), p
    why = [w for w in report.warnings if "not finite" in w]
    assert len(why) == 1 and "α=-3" in why[0] and "α=-1.5" not in why[0], report.warnings
    assert "running variance is negative" in why[0] and "--recalibrate-bn" in why[0]
    assert "features.0.1.running_var" in why[0]


def _interrupted_after(monkeypatch, calls: int):
    """``Passes.evaluate_many`` raises SIGTERM's interruption at its call number ``calls``, one
    point per call (``POINTS_BYTES`` of one weight vector)."""
    from landscape_cli.analyses import paths
    from landscape_cli.errors import Interrupted

    monkeypatch.setattr(paths, "POINTS_BYTES", 1)
    evaluate_many, seen = Passes.evaluate_many, []

    def counting(self, *args, **kwargs):
        seen.append(1)
        if len(seen) == calls:
            raise Interrupted(15, "SIGTERM")
        return evaluate_many(self, *args, **kwargs)

    monkeypatch.setattr(Passes, "evaluate_many", counting)


def _run_interpolate(checkpoints, **options):
    from landscape_cli import runner
    from landscape_cli.options import RunOptions

    prepared = runner.prepare("interpolate", [str(c) for c in checkpoints], RunOptions.of(
        {"config": str(MLP_CONFIG), "set": SET, "dtype": "float64", "device": "cpu"}), options)
    report, interrupted = runner.execute(prepared)
    return json.loads(report.to_json()), interrupted


def test_an_interrupted_line_reports_the_points_finished(monkeypatch):
    whole, _ = _run_interpolate([A, B], alphas="0:1:5")
    # calls 1-2: the endpoints, one each; 3-4: the line's first two points; 5: stopped
    _interrupted_after(monkeypatch, 5)
    doc, interrupted = _run_interpolate([A, B], alphas="0:1:5")
    assert interrupted is not None and interrupted.exit_code == 143
    assert doc["status"] == "interrupted"
    assert doc["results"]["points"] == whole["results"]["points"][:2]
    assert doc["results"]["loss_a"] == whole["results"]["loss_a"]
    assert "interrupted: 2 of 5 points evaluated" in doc["warnings"]


def test_an_interrupted_plane_has_null_where_it_did_not_reach(monkeypatch):
    whole, _ = _run_interpolate([A], plane=True, grid="-1:1:3")
    _interrupted_after(monkeypatch, 5)  # no endpoints around one checkpoint: 4 nodes done
    doc, _ = _run_interpolate([A], plane=True, grid="-1:1:3")
    assert doc["status"] == "interrupted"
    loss, full = doc["results"]["plane"]["loss"], whole["results"]["plane"]["loss"]
    # one point per call leaves no plane to mix the leading layer's outputs over (the whole run
    # mixes them): the same losses to rounding
    assert [[v is None for v in row] for row in loss] == [[False] * 3, [False, True, True], [True] * 3]
    assert loss[0] == pytest.approx(full[0], rel=1e-12)
    assert loss[1][0] == pytest.approx(full[1][0], rel=1e-12)
    assert "interrupted: 4 of 9 points evaluated" in doc["warnings"]


# ----------------------------------------------------------------------------- 5. pairs, globs


def test_many_checkpoints_barrier_matrix_matches_pairs():
    paths = [A, B, C]
    many = interpolate(paths, alphas="0:1:5").results
    assert many["path"] == "pairs" and many["checkpoints"] == [str(p) for p in paths]
    matrix = many["barrier_matrix"]
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    for i in range(3):
        assert matrix[i][i] == 0.0
        for j in range(3):
            assert matrix[i][j] == matrix[j][i]
    assert [(c["a"], c["b"]) for c in many["curves"]] == [(0, 1), (0, 2), (1, 2)]
    for curve in many["curves"]:
        i, j = curve["a"], curve["b"]
        pair = interpolate([paths[i], paths[j]], alphas="0:1:5").results
        assert matrix[i][j] == pytest.approx(pair["barrier"], abs=1e-9), (i, j)
        assert curve["barrier"] == pytest.approx(pair["barrier"], abs=1e-9)
        assert curve["barrier_mid_ends"] == pytest.approx(pair["barrier_mid_ends"], abs=1e-9)
        assert curve["alpha_max"] == pair["alpha_max"]
        assert [p["loss"] for p in curve["points"]] == pytest.approx(
            [p["loss"] for p in pair["points"]], abs=1e-9)
    assert max(v for row in matrix for v in row) > 0.01


def test_glob_expands_in_natural_order(tmp_path):
    report = interpolate([MLP_DIR / "seed0_epoch*.pt"], alphas="0:1:3")
    assert report.results["checkpoints"] == [str(MLP_DIR / f"seed0_epoch{e}.pt")
                                             for e in ("001", "010", "100")]
    # epoch2 before epoch10 (plain sorting puts it after)
    for epoch, source in ((1, "001"), (2, "010"), (10, "100")):
        shutil.copy(MLP_DIR / f"seed0_epoch{source}.pt", tmp_path / f"ck_epoch{epoch}.pt")
    ran = invoke(["interpolate", tmp_path / "ck_epoch*.pt", "-c", MLP_CONFIG, "--set", SET[0],
                  "--dtype", "float64", "--device", "cpu", "--alphas", "0:1:3", "--json"])
    assert ran.returncode == 0, ran.detail()
    doc = json.loads(ran.stdout)
    assert doc["results"]["checkpoints"] == [str(tmp_path / f"ck_epoch{e}.pt") for e in (1, 2, 10)]
    assert len(doc["results"]["barrier_matrix"]) == 3


# ----------------------------------------------------------------------------- 6. eval data


def test_eval_data_curve_matches_reference(tmp_path):
    held_x, held_y = DIGITS["x"][-200:], DIGITS["y"][-200:]
    npz = tmp_path / "held_out.npz"
    np.savez(npz, x=held_x, y=held_y)
    config = write_config(tmp_path / "eval.yaml", max_samples=N,
                          extra_data=f"eval_data:\n  path: {npz}\n")
    report = interpolate([A, B], config=config, set=[], alphas="-0.25:1.25:7")
    res = report.results
    assert [p["alpha"] for p in res["eval_points"]] == [p["alpha"] for p in res["points"]]
    x, y = digits(N)
    ex = torch.from_numpy(held_x).double()
    ey = torch.from_numpy(held_y).long()
    model, sa, sb = mlp(), state_of(A), state_of(B)
    losses = []
    for p, q in zip(res["points"], res["eval_points"]):
        a = p["alpha"]
        state = mix([1 - a, a], [sa, sb])
        assert close(p["loss"], reference(model, state, x, y)[0]), p
        loss, acc = reference(model, state, ex, ey)
        assert close(q["loss"], loss), (a, q["loss"], loss)
        assert q["accuracy"] == pytest.approx(acc, abs=1e-12)
        losses.append(loss)
    assert abs(res["eval_points"][3]["loss"] - res["points"][3]["loss"]) > 1e-6
    barrier, _, _, _ = barriers_of([p["alpha"] for p in res["eval_points"]], losses)
    assert close(res["eval_barrier"], barrier)


# ----------------------------------------------------------------------------- 7. bad input


def _mlp_args(*args):
    return ["interpolate", *args, "-c", MLP_CONFIG, "--set", SET[0], "--device", "cpu"]


@pytest.mark.parametrize(("args", "needles"), [
    pytest.param((A, CNN_CKPT), (str(CNN_CKPT),), id="architectures"),
    pytest.param((A, "HIDDEN16"), ("hidden16.pt", "shape"), id="architectures-same-keys"),
    pytest.param((A,), ("--plane",), id="one-checkpoint"),
    pytest.param((A, B, "--alphas", "0:1:1"), ("--alphas", "0:1:1"), id="one-point-grid"),
    pytest.param((A, "--plane", "--normalize", "filters"), ("filters",), id="normalization"),
    pytest.param((A, B, C, "--via", C), ("--via",), id="via-three"),
    pytest.param((str(MLP_DIR / "nothing_*.pt"), B), ("nothing_*.pt",), id="empty-glob"),
])
def test_bad_input_exits_2_with_one_line(args, needles, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    torch.save(SAMPLE.make_mlp(16).state_dict(), inputs / "hidden16.pt")  # same keys, other shapes
    args = [inputs / "hidden16.pt" if a == "HIDDEN16" else a for a in args]
    work = tmp_path / "work"
    work.mkdir()
    ran = invoke(_mlp_args(*args), cwd=work)
    assert_one_error(ran, needles, folder=work, before=[])


# ----------------------------------------------------------------------------- 8. plot, gates


def test_plot_writes_a_file(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out.png"
    ran = invoke(_mlp_args(A, B, "--alphas", "0:1:5", "--plot", out, "--json"))
    assert ran.returncode == 0, ran.detail()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fail_if_barrier():
    ran = invoke(_mlp_args(A, B, "--alphas", "0:1:5", "--json", "--fail-if", "barrier>0"))
    assert ran.returncode == 1, ran.detail()
    assert json.loads(ran.stdout)["results"]["barrier"] > 0
    ran = invoke(_mlp_args(A, B, "--alphas", "0:1:5", "--json", "--fail-if", "barrier>100"))
    assert ran.returncode == 0, ran.detail()
