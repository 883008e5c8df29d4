"""Directions and planes (issue 20, item 4): Li et al.'s filter normalisation on the sample CNN
and MLP, seeding, Garipov et al.'s plane through three checkpoints, the directions file, and
the ``start:stop:num`` grid syntax."""

from __future__ import annotations

import importlib.util
import itertools
import math

import pytest
import torch
from helpers.samples import CNN_CKPT, MLP_CKPT, ROOT
from safetensors.torch import save_file

from landscape_cli.analyses.directions import (
    Plane,
    plane_through,
    points,
    random_direction,
    random_plane,
)
from landscape_cli.analyses.plane_file import load_plane, save_plane
from landscape_cli.errors import LandscapeError
from landscape_cli.grids import parse_grid

MLP_DIR = ROOT / "sample_checkpoints" / "mlp"


def _models():
    spec = importlib.util.spec_from_file_location("sample_models",
                                                  ROOT / "sample_checkpoints" / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODELS = _models()


def _state(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model_state_dict", state)


def _flat(model):
    """The model's parameters as (names, shapes, flat weights), in named_parameters order."""
    named = list(model.named_parameters())
    names = [n for n, _ in named]
    shapes = [tuple(p.shape) for _, p in named]
    return names, shapes, torch.cat([p.detach().reshape(-1) for _, p in named])


def cnn():
    model = MODELS.DigitsCNN()
    model.load_state_dict(_state(CNN_CKPT))
    return _flat(model)


def mlp(path=MLP_CKPT):
    model = MODELS.make_mlp()
    model.load_state_dict(_state(path))
    return _flat(model)


MODELS_UNDER_TEST = {"cnn": cnn, "mlp": mlp}


def pieces(names, shapes, flat):
    """name -> the tensor of that parameter in a flat vector."""
    split = flat.split([math.prod(s) for s in shapes])
    return {n: t.view(s) for n, t, s in zip(names, split, shapes)}


def direction(names, shapes, weights, seed=0, **options):
    return random_direction(names, shapes, weights, torch.Generator().manual_seed(seed), **options)


def assert_one_line(error: pytest.ExceptionInfo, *parts: str):
    message = str(error.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# ----------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("model", MODELS_UNDER_TEST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_filter_normalization_matches_every_weight_filter(model, dtype):
    names, shapes, weights = MODELS_UNDER_TEST[model]()
    weights = weights.to(dtype)
    d = direction(names, shapes, weights)
    assert d.dtype == dtype and d.shape == weights.shape
    ws, ds = pieces(names, shapes, weights.double()), pieces(names, shapes, d.double())
    filtered = 0
    for name, w in ws.items():
        if w.dim() < 2:
            assert torch.count_nonzero(ds[name]) == 0, name  # ignored: exactly zero
            continue
        w_norms, d_norms = w.flatten(1).norm(dim=1), ds[name].flatten(1).norm(dim=1)
        assert len(d_norms) == w.shape[0]
        torch.testing.assert_close(d_norms, w_norms, rtol=1e-6, atol=0)
        filtered += 1
    assert filtered == (3 if model == "cnn" else 2)
    # a direction, not the weights themselves
    assert not torch.allclose(d, weights)


def test_ignored_tensors_are_biases_and_norm_parameters():
    names, shapes, weights = cnn()
    d = pieces(names, shapes, direction(names, shapes, weights))
    zero = {n for n, t in d.items() if torch.count_nonzero(t) == 0}
    assert zero == {"features.0.1.weight", "features.0.1.bias", "features.1.1.weight",
                    "features.1.1.bias", "classifier.bias"}


def test_ignore_none_copies_one_dimensional_weights_under_filter():
    names, shapes, weights = cnn()
    ws = pieces(names, shapes, weights)
    d = pieces(names, shapes, direction(names, shapes, weights, ignore="none"))
    for name, w in ws.items():
        if w.dim() <= 1:
            assert torch.equal(d[name], w), name  # Li et al.: d.copy_(w)


@pytest.mark.parametrize("model", MODELS_UNDER_TEST)
def test_layer_normalization_matches_each_tensor_norm(model):
    names, shapes, weights = MODELS_UNDER_TEST[model]()
    weights = weights.double()
    ws = pieces(names, shapes, weights)
    for ignore in ("biasbn", "none"):
        d = pieces(names, shapes, direction(names, shapes, weights, normalize="layer",
                                            ignore=ignore))
        for name, w in ws.items():
            if w.dim() <= 1 and ignore == "biasbn":
                assert torch.count_nonzero(d[name]) == 0, name
                continue
            assert d[name].norm().item() == pytest.approx(w.norm().item(), rel=1e-12), name
            if w.dim() <= 1:
                assert not torch.equal(d[name], w)  # rescaled like a layer, not copied
    # a layer's filters are not each at their weight filter's norm
    big = max((n for n in ws if ws[n].dim() >= 2), key=lambda n: ws[n].shape[0])
    d = pieces(names, shapes, direction(names, shapes, weights, normalize="layer"))
    assert not torch.allclose(d[big].flatten(1).norm(dim=1), ws[big].flatten(1).norm(dim=1),
                              rtol=1e-3)


def test_no_normalization_is_the_plain_draw():
    names, shapes, weights = mlp()
    generator = torch.Generator().manual_seed(7)
    drawn = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    d = pieces(names, shapes, direction(names, shapes, weights.double(), seed=7, normalize="none",
                                        ignore="none"))
    for name, expected in zip(names, drawn):
        assert torch.equal(d[name], expected), name
    d = pieces(names, shapes, direction(names, shapes, weights.double(), seed=7, normalize="none"))
    for name, expected in zip(names, drawn):
        if expected.dim() <= 1:
            assert torch.count_nonzero(d[name]) == 0
        else:
            assert torch.equal(d[name], expected), name


def test_same_seed_same_direction_other_seed_another():
    names, shapes, weights = cnn()
    first = direction(names, shapes, weights, seed=3)
    assert torch.equal(first, direction(names, shapes, weights, seed=3))
    assert not torch.allclose(first, direction(names, shapes, weights, seed=4))
    # drawn in float64 on the CPU: the float32 direction is the float64 one rounded
    wide = direction(names, shapes, weights, seed=3, dtype=torch.float64)
    assert torch.equal(wide.float(), first)
    # --ignore does not shift the stream: the weight tensors' directions stay the same
    kept = pieces(names, shapes, direction(names, shapes, weights, seed=3, ignore="none"))
    for name, t in pieces(names, shapes, first).items():
        if t.dim() >= 2:
            assert torch.equal(t, kept[name])


@pytest.mark.parametrize("options, option, value", [
    ({"normalize": "filters"}, "--normalize", "filters"),
    ({"normalize": "Filter"}, "--normalize", "Filter"),
    ({"ignore": "bias"}, "--ignore", "bias"),
])
def test_unknown_options_refused(options, option, value):
    names, shapes, weights = mlp()
    with pytest.raises(LandscapeError) as error:
        direction(names, shapes, weights, **options)
    assert_one_line(error, f"{option} {value}", "none")
    with pytest.raises(LandscapeError) as error:
        random_plane(weights, names, shapes, 0, **options)
    assert_one_line(error, option)


# ----------------------------------------------------------------------------- planes


def test_random_plane_draws_u_then_v_from_one_generator():
    names, shapes, weights = cnn()
    plane = random_plane(weights, names, shapes, seed=11)
    generator = torch.Generator().manual_seed(11)
    assert torch.equal(plane.u, random_direction(names, shapes, weights, generator))
    assert torch.equal(plane.v, random_direction(names, shapes, weights, generator))
    assert torch.equal(plane.origin, weights)
    assert (plane.basis, plane.seed, plane.normalize, plane.ignore) == \
        ("random", 11, "filter", "biasbn")
    assert plane.names == tuple(names) and plane.shapes == tuple(shapes)
    again = random_plane(weights, names, shapes, seed=11)
    assert torch.equal(again.u, plane.u) and torch.equal(again.v, plane.v)
    assert not torch.allclose(random_plane(weights, names, shapes, seed=12).u, plane.u)


def _reproduces(plane, coordinates, vectors):
    for label, vector in vectors.items():
        x, y = coordinates[label]
        rebuilt = plane.origin + x * plane.u + y * plane.v
        torch.testing.assert_close(rebuilt, vector, rtol=0, atol=1e-10)
        torch.testing.assert_close(points(plane, [x], [y])[0], vector, rtol=0, atol=1e-10)


def test_plane_through_three_vectors_reproduces_each():
    generator = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(57, generator=generator, dtype=torch.float64) for _ in range(3))
    plane, coordinates = plane_through(a, b, c, labels=("A", "B", "C"))
    assert plane.basis == "checkpoints"
    assert coordinates["A"] == (0.0, 0.0) and coordinates["B"] == (1.0, 0.0)
    assert abs(plane.u.dot(plane.v).item()) < 1e-12 * plane.u.dot(plane.u).item()
    assert plane.v.norm().item() == pytest.approx(plane.u.norm().item(), rel=1e-14)
    x, y = coordinates["C"]
    assert x == pytest.approx(((c - a).dot(b - a) / (b - a).dot(b - a)).item(), rel=1e-12)
    assert y > 0
    _reproduces(plane, coordinates, {"A": a, "B": b, "C": c})


def test_plane_through_three_sample_checkpoints():
    names, shapes, _ = mlp()
    a, b, c = (mlp(MLP_DIR / f"seed0_epoch{e:03d}.pt")[2].double() for e in (1, 10, 100))
    plane, coordinates = plane_through(a, b, c, labels=("e1", "e10", "e100"), names=names,
                                       shapes=shapes)
    _reproduces(plane, coordinates, {"e1": a, "e10": b, "e100": c})
    assert plane.names == tuple(names)


def test_plane_through_float32_checkpoints_keeps_their_dtype():
    a, b, c = (mlp(MLP_DIR / f"seed1_epoch{e:03d}.pt")[2] for e in (1, 10, 100))
    plane, coordinates = plane_through(a, b, c)
    assert plane.u.dtype == plane.v.dtype == torch.float32
    for label, vector in zip("abc", (a, b, c)):
        x, y = coordinates[label]
        torch.testing.assert_close(points(plane, [x], [y])[0], vector, rtol=0, atol=1e-5)


def test_collinear_and_coincident_checkpoints_refused():
    generator = torch.Generator().manual_seed(1)
    a, b = (torch.randn(40, generator=generator, dtype=torch.float64) for _ in range(2))
    for t in (0.3, 5.0, -2.0, 0.0):
        with pytest.raises(LandscapeError) as error:
            plane_through(a, b, a + t * (b - a), labels=("A", "B", "C"))
        assert_one_line(error, "--plane", "C lies on the line through A and B")
    with pytest.raises(LandscapeError) as error:
        plane_through(a, a.clone(), b, labels=("A", "B", "C"))
    assert_one_line(error, "--plane", "A and B are the same weights")
    # float32 rounding does not take a midpoint off the line
    a32, b32 = a.float() * 30, b.float() * 30
    with pytest.raises(LandscapeError):
        plane_through(a32, b32, (a32 + b32) / 2)
    # slightly off the line is a plane
    off = torch.zeros(40, dtype=torch.float64)
    off[0] = 1e-3
    off -= off.dot(b - a) / (b - a).dot(b - a) * (b - a)
    c = (a + b) / 2 + off
    plane, coordinates = plane_through(a, b, c)
    assert coordinates["c"][1] > 0
    _reproduces(plane, coordinates, {"a": a, "b": b, "c": c})


def test_points_are_row_major_over_y_then_x():
    generator = torch.Generator().manual_seed(2)
    origin, u, v = (torch.randn(9, generator=generator, dtype=torch.float64) for _ in range(3))
    plane = Plane(origin=origin, u=u, v=v, basis="hessian")
    xs, ys = [-1.0, 0.0, 0.5, 2.0], [-0.5, 1.0, 3.0]
    grid = points(plane, xs, ys)
    assert grid.shape == (len(ys) * len(xs), 9)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            torch.testing.assert_close(grid[i * len(xs) + j], origin + x * u + y * v,
                                       rtol=0, atol=0)
    values = grid.sum(dim=1)
    assert values.view(len(ys), len(xs))[2, 1] == values[2 * len(xs) + 1]


def test_plane_checks_its_parts():
    vector = torch.zeros(4)
    with pytest.raises(ValueError):
        Plane(origin=vector, u=vector, v=vector, basis="eigen")
    with pytest.raises(ValueError):
        Plane(origin=vector, u=torch.zeros(5), v=vector, basis="random")
    with pytest.raises(ValueError):
        Plane(origin=vector, u=vector, v=vector, basis="random", names=("w",), shapes=((5,),))


# ----------------------------------------------------------------------------- files


def test_save_load_round_trip_is_exact(tmp_path):
    names, shapes, weights = cnn()
    plane = random_plane(weights, names, shapes, seed=5, normalize="layer", ignore="none")
    file = tmp_path / "dirs.safetensors"
    save_plane(plane, file, inputs=[CNN_CKPT])
    loaded = load_plane(file, names, shapes)
    for key in ("origin", "u", "v"):
        assert torch.equal(getattr(loaded, key), getattr(plane, key)), key
        assert getattr(loaded, key).dtype == torch.float32
    assert (loaded.basis, loaded.seed, loaded.normalize, loaded.ignore) == \
        ("random", 5, "layer", "none")
    assert loaded.names == tuple(names) and loaded.shapes == tuple(shapes)
    wide = load_plane(file, names, shapes, dtype=torch.float64)
    assert wide.u.dtype == torch.float64 and torch.equal(wide.u.float(), plane.u)

    a, b, c = (mlp(MLP_DIR / f"seed0_epoch{e:03d}.pt") for e in (1, 10, 100))
    through, _ = plane_through(a[2].double(), b[2].double(), c[2].double(), names=a[0],
                               shapes=a[1])
    save_plane(through, file)  # replaces the file
    loaded = load_plane(file, a[0], a[1])
    assert loaded.basis == "checkpoints" and loaded.seed is None and loaded.normalize is None
    for key in ("origin", "u", "v"):
        assert torch.equal(getattr(loaded, key), getattr(through, key)), key
    assert [p.name for p in tmp_path.iterdir()] == ["dirs.safetensors"]  # no temporary left


def test_save_refuses_a_bad_destination(tmp_path):
    names, shapes, weights = mlp()
    plane = random_plane(weights, names, shapes, seed=0)
    with pytest.raises(LandscapeError) as error:
        save_plane(plane, MLP_CKPT, inputs=[MLP_CKPT])
    assert_one_line(error, "--save-directions", "input")
    with pytest.raises(LandscapeError) as error:
        save_plane(plane, tmp_path / "missing" / "d.safetensors")
    assert_one_line(error, "--save-directions", "does not exist")
    with pytest.raises(LandscapeError) as error:
        save_plane(plane, tmp_path)
    assert_one_line(error, "--save-directions", "folder")


def test_mismatched_directions_refused(tmp_path):
    names, shapes, weights = mlp()
    file = tmp_path / "mlp.safetensors"
    save_plane(random_plane(weights, names, shapes, seed=0), file)

    renamed = ["0.weight", "0.bias", "out.weight", "2.bias"]
    with pytest.raises(LandscapeError) as error:
        load_plane(file, renamed, shapes)
    assert_one_line(error, "--load-directions", str(file), "parameter 2", "2.weight [10, 32]",
                    "out.weight [10, 32]")

    wider = [(48, 64), (48,), (10, 48), (10,)]
    with pytest.raises(LandscapeError) as error:
        load_plane(file, names, wider)
    assert_one_line(error, str(file), "parameter 0", "0.weight [32, 64]", "0.weight [48, 64]")

    cnn_names, cnn_shapes, _ = cnn()
    with pytest.raises(LandscapeError) as error:
        load_plane(file, cnn_names, cnn_shapes)
    assert_one_line(error, str(file), "features.0.0.weight")

    with pytest.raises(LandscapeError) as error:
        load_plane(file, names[:2], shapes[:2])
    assert_one_line(error, str(file), "2.weight [10, 32]", "not in the model")
    with pytest.raises(LandscapeError) as error:
        load_plane(file, [*names, "extra"], [*shapes, (3,)])
    assert_one_line(error, str(file), "extra [3]", "not in the file")


def test_unreadable_or_foreign_files_refused(tmp_path):
    names, shapes, weights = mlp()
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"origin": weights, "u": weights.clone(), "v": weights.clone()}, foreign)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for file, says in ((garbage, "not a safetensors file"), (foreign, "not a directions file"),
                       (empty, "not a safetensors file"),
                       (tmp_path / "absent.safetensors", "does not exist"),
                       (tmp_path, "folder")):
        with pytest.raises(LandscapeError) as error:
            load_plane(file, names, shapes)
        assert_one_line(error, "--load-directions", str(file), says)
    # a well-formed file whose tensors do not fit its own metadata
    damaged = tmp_path / "damaged.safetensors"
    plane = random_plane(weights, names, shapes, seed=0)
    save_plane(plane, damaged)
    short = Plane(origin=weights[:-1], u=weights[:-1], v=weights[:-1], basis="random")
    object.__setattr__(short, "names", plane.names)
    object.__setattr__(short, "shapes", plane.shapes)
    save_plane(short, damaged)
    with pytest.raises(LandscapeError) as error:
        load_plane(damaged, names, shapes, option="--directions")
    assert_one_line(error, "--directions", str(damaged), "tensor origin")


# ----------------------------------------------------------------------------- grids


@pytest.mark.parametrize("text, expected", [
    ("-1:1:21", [-1 + i / 10 for i in range(21)]),
    ("-0.25:1.25:31", [-0.25 + 0.05 * i for i in range(31)]),
    ("0:1:2", [0.0, 1.0]),
    (" 0 : 2 : 3 ", [0.0, 1.0, 2.0]),
    ("-1e-3:1e-3:3", [-1e-3, 0.0, 1e-3]),
])
def test_parse_grid_good(text, expected):
    values = parse_grid(text, "--grid")
    assert values == pytest.approx(expected, rel=0, abs=1e-15)
    assert values[0] == float(text.split(":")[0]) and values[-1] == float(text.split(":")[1])
    steps = [b - a for a, b in itertools.pairwise(values)]
    assert max(steps) - min(steps) < 1e-12


def test_parse_grid_middle_is_exactly_zero():
    assert parse_grid("-1:1:21", "--grid")[10] == 0.0


@pytest.mark.parametrize("text, option, message", [
    ("1:0:5", "--grid", "--grid 1:0:5: start must be less than stop"),
    ("1:1:5", "--grid", "--grid 1:1:5: start must be less than stop"),
    ("-0.25:1.25:1", "--alphas", "--alphas -0.25:1.25:1: at least 2 points"),
    ("0:1:0", "--alphas", "--alphas 0:1:0: at least 2 points"),
    ("0:1:-3", "--grid", "--grid 0:1:-3: at least 2 points"),
    ("0:1", "--grid", "--grid 0:1: expected start:stop:num"),
    ("0:1:5:7", "--grid", "--grid 0:1:5:7: expected start:stop:num"),
    ("", "--grid", "expected start:stop:num"),
    ("a:1:5", "--grid", "--grid a:1:5: start 'a' is not a number"),
    ("0:b:5", "--grid", "--grid 0:b:5: stop 'b' is not a number"),
    ("0:1:2.5", "--grid", "--grid 0:1:2.5: num '2.5' is not a whole number of points"),
    ("0:nan:5", "--grid", "--grid 0:nan:5: stop must be a finite number"),
    ("-inf:1:5", "--grid", "--grid -inf:1:5: start must be a finite number"),
    ("0:1:10000000", "--grid", "at most"),
    ("-1e308:1e308:3", "--grid", "too wide"),
])
def test_parse_grid_bad(text, option, message):
    with pytest.raises(LandscapeError) as error:
        parse_grid(text, option)
    assert_one_line(error, message)


def test_parse_grid_error_stays_on_one_line():
    with pytest.raises(LandscapeError) as error:
        parse_grid("0:1\n", "--grid")
    assert_one_line(error, "--grid 0:1\\n: expected start:stop:num")
