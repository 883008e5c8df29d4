"""`interpolate`'s pictures (``report.plot.write_interpolate_plot``) and terminal view
(``report.curve_view``, through ``report.render``), on documents written by hand: a line with
eval points and accuracy, a Bézier curve, many checkpoints, a plane, and nulls. The views draw
what the document holds; the numbers in these documents are deliberately not the ones the
points would give, so a view that recomputed them would show other numbers."""

from __future__ import annotations

import copy
import math

import pytest

from landscape_cli.report import curve_view
from landscape_cli.report.curve_view import interpolate_extras, short_names
from landscape_cli.report.render import render
from landscape_cli.results.interpolate import InterpolateResult

A, B, C, D = "runs/seed0/final.pt", "runs/seed1/final.pt", "runs/curve/control.pt", "runs/seed2/final.pt"
ALPHAS = [-0.25 + 0.125 * i for i in range(13)]  # -0.25 … 1.25, 0 and 1 among them


def _envelope(results: dict) -> dict:
    return {
        "schema_version": "1", "command": "interpolate", "status": "ok",
        "tool": {"name": "landscape", "version": "0.1.0", "torch": "2.x"},
        "checkpoint": {"path": A, "sha256": "0" * 64, "format": "state_dict", "n_params": 3466},
        "settings": {"device": "cpu", "dtype": "float32", "seed": 0, "bn": "eval", "n_samples": 400},
        "results": results,
        "cost": {"data_passes": 13, "wall_s": 0.5, "total_s": 1.5},
        "gates": [], "warnings": [],
    }


def _bump(alpha: float, base: float = 0.2) -> float:
    """A loss from ``base`` at α = 0 to ``base`` + 0.3 at α = 1, with a bump of 0.8 between."""
    return base + 0.3 * alpha + 0.8 * math.sin(math.pi * alpha) ** 2


def line_doc() -> dict:
    points = [{"alpha": a, "loss": _bump(a), "accuracy": 0.95 - 0.3 * a * (1 - a)} for a in ALPHAS]
    eval_points = [{"alpha": a, "loss": _bump(a, 0.35), "accuracy": 0.9 - 0.3 * a * (1 - a)}
                   for a in ALPHAS]
    return _envelope({
        "loss": 0.2, "accuracy": 0.95, "path": "line", "checkpoints": [A, B], "recalibrate_bn": False,
        "points": points, "eval_points": eval_points, "loss_a": 0.2, "loss_b": 0.5,
        # not what the points give (their barrier is 0.8 at α = 0.5, their mid-ends one 0.85):
        # the view must show these numbers, not work out its own
        "barrier": 0.777, "alpha_max": 0.625, "barrier_mid_ends": 0.4321, "error_barrier": 0.0625,
    })


def curve_doc() -> dict:
    doc = line_doc()
    results = doc["results"]
    del results["eval_points"], results["error_barrier"]
    results.update(path="curve", via=C, checkpoints=[A, B, C], recalibrate_bn=True,
                   barrier=0.0123, alpha_max=0.5, barrier_unaligned=2.5)
    for point in results["points"]:
        point.pop("accuracy")
    return doc


def pairs_doc() -> dict:
    names = [A, B, D]
    matrix = [[0.0, 0.31, 1.25], [0.31, 0.0, None], [1.25, None, 0.0]]
    curves = [{"a": i, "b": j, "barrier": matrix[i][j],
               "points": [{"alpha": a, "loss": _bump(a, 0.1 * (i + j))} for a in ALPHAS]}
              for i, j in ((0, 1), (0, 2))]
    return _envelope({"loss": 0.2, "path": "pairs", "checkpoints": names, "recalibrate_bn": False,
                      "barrier_matrix": matrix, "curves": curves})


def plane_doc() -> dict:
    xs = [-1 + 0.1 * i for i in range(21)]
    ys = [-1 + 0.2 * j for j in range(11)]
    loss = [[0.05 + (x - 0.2) ** 2 + 2 * y * y + 0.5 * math.sin(3 * x) ** 2 for x in xs] for y in ys]
    accuracy = [[max(0.0, 1 - v / 4) for v in row] for row in loss]
    return _envelope({"loss": 0.2, "accuracy": 0.95, "path": "plane", "checkpoints": [A, B, C],
                      "recalibrate_bn": False,
                      "plane": {"x": xs, "y": ys, "loss": loss, "accuracy": accuracy,
                                "coordinates": {A: [0.0, 0.0], B: [0.8, 0.0], C: [0.3, 0.6]},
                                "directions": "checkpoints"}})


def with_nulls(doc: dict) -> dict:
    """The same document with nulls where NaN / Inf would have been."""
    doc = copy.deepcopy(doc)
    results = doc["results"]
    if "points" in results:
        results["points"][3]["loss"] = None
        if "accuracy" in results["points"][5]:
            results["points"][5]["accuracy"] = None
        results["barrier"] = None
        results["alpha_max"] = None
    if "eval_points" in results:
        results["eval_points"][7]["loss"] = None
    if "plane" in results:
        results["plane"]["loss"][2][4] = None
        results["plane"]["loss"][5][0] = None
    if "curves" in results:
        results["curves"][0]["points"][2]["loss"] = None
        results["curves"][1]["barrier"] = None
        results["barrier_matrix"][0][2] = None
    return doc


KINDS = {"line": line_doc, "curve": curve_doc, "pairs": pairs_doc, "plane": plane_doc}


def table(doc: dict) -> str:
    return render(doc, "table", result=InterpolateResult)


# ----------------------------------------------------------------------------- the terminal view


#: what the terminal shows of each kind of document: its own numbers and names
SHOWN = {
    # the document's barrier (0.777 at 0.625), not the points' own maximum; the eval curve
    # has its own chart
    "line": ("loss along the line", "barrier 0.777 at α = 0.625 (loss_a 0.2, loss_b 0.5)",
             "barrier_mid_ends 0.4321", "error_barrier 0.0625", "A = seed0/final.pt",
             "B = seed1/final.pt", "eval loss", "α -0.25", "1.25"),
    "curve": ("quadratic Bézier curve", "A = seed0/final.pt, B = seed1/final.pt via curve/control.pt",
              "BatchNorm recalibrated at every point",
              "barrier 0.0123 at α = 0.5 (loss_a 0.2, loss_b 0.5)", "before alignment 2.5"),
    "pairs": ("pairwise barriers", "seed0/final.pt", "seed1/final.pt", "seed2/final.pt", "0.31",
              "1.25", "seed0/final.pt → seed1/final.pt", "barrier 0.31"),
    "plane": ("loss plane (checkpoints directions, 21 × 11 grid; rows are y)",
              "A = seed0/final.pt at (0, 0)", "B = seed1/final.pt at (0.8, 0)",
              "C = curve/control.pt at (0.3, 0.6)",
              "log scale"),  # every loss positive, spanning > 20×
}


@pytest.mark.parametrize("kind", list(SHOWN))
def test_the_table_shows_the_documents_numbers_and_names(kind):
    out = table(KINDS[kind]())
    words = " ".join(out.split())  # wherever the terminal's width wraps a line
    missing = [text for text in SHOWN[kind] if text not in words]
    assert not missing, out


def test_line_chart_draws_bars():
    assert table(line_doc()).count("█") > 20


def test_curve_shows_no_error_barrier_the_document_lacks():
    assert "error_barrier" not in table(curve_doc()).split("loss along")[1]


def test_line_chart_marks_a_b_and_the_barriers_alpha_where_the_document_puts_them():
    extras = interpolate_extras(line_doc()["results"])
    chart = next(e for e in extras if not isinstance(e, str))
    baseline = next(line for line in chart.plain.splitlines() if "└" in line)
    marks = baseline.split("└", 1)[1]
    width = len(marks) // len(ALPHAS)
    column = {mark: marks.index(mark) // width for mark in "AB^"}
    assert column == {"A": ALPHAS.index(0.0), "B": ALPHAS.index(1.0), "^": ALPHAS.index(0.625)}


def test_plane_map_marks_the_checkpoints_cells():
    extras = interpolate_extras(plane_doc()["results"])
    drawing = next(e for e in extras if not isinstance(e, str)).plain.splitlines()
    rows = [line.split("│", 1)[1] for line in drawing if "│" in line]
    assert len(rows) == 11  # one text row per y, the largest y first
    width = len(rows[0]) // 21
    # A at (x=0, y=0): column 10, row of y = 0 (index 5 from the bottom, i.e. 5 from the top)
    assert rows[5][10 * width] == "A" and rows[5][18 * width] == "B"
    assert rows[11 - 1 - 8][13 * width] == "C"  # y = 0.6 is index 8 of the y's


@pytest.mark.parametrize("kind", list(KINDS))
def test_nulls_render_without_a_crash(kind):
    doc = with_nulls(KINDS[kind]())
    out = table(doc)
    assert "interpolate" in out
    if kind in ("line", "curve"):
        assert "barrier null at α = null" in out
    if kind == "plane":
        assert "? = null" in out
    if kind == "pairs":
        assert "barrier null" in out
    for fmt in ("json", "md", "csv"):
        render(doc, fmt, result=InterpolateResult)


def test_a_document_without_the_extras_keys_still_renders():
    doc = _envelope({"loss": 0.3, "path": "line", "checkpoints": [A, B], "recalibrate_bn": False,
                     "points": []})
    assert "barrier null" in table(doc)
    doc = _envelope({"loss": 0.3, "path": "plane", "checkpoints": [A], "recalibrate_bn": False,
                     "plane": {"x": [], "y": [], "loss": []}})
    assert "no finite loss" in table(doc)


def test_short_names_drop_only_the_shared_folders():
    assert short_names([A, B]) == ["seed0/final.pt", "seed1/final.pt"]
    assert short_names(["a.pt", "b.pt"]) == ["a.pt", "b.pt"]
    assert short_names(["x/a.pt", "x/a.pt"]) == ["a.pt", "a.pt"]
    assert short_names([A]) == ["final.pt"]


# ----------------------------------------------------------------------------- plots


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def _plot(doc: dict, path) -> bytes:
    from landscape_cli.report.plot import check_destination, write_interpolate_plot

    write_interpolate_plot(doc, check_destination(path))
    return path.read_bytes()


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("nulls", [False, True], ids=["plain", "nulls"])
def test_every_kind_writes_png_and_svg(mpl, tmp_path, kind, nulls):
    doc = KINDS[kind]()
    doc = with_nulls(doc) if nulls else doc
    png = _plot(doc, tmp_path / f"{kind}.png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    svg = _plot(doc, tmp_path / f"{kind}.svg").decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{kind}.png", f"{kind}.svg"]  # no temp left


def test_pdf_too(mpl, tmp_path):
    assert _plot(line_doc(), tmp_path / "line.pdf").startswith(b"%PDF")


def test_plane_svg_names_each_checkpoint(mpl, tmp_path):
    svg = _plot(plane_doc(), tmp_path / "plane.svg").decode()
    for name in ("seed0/final.pt", "seed1/final.pt", "curve/control.pt"):
        assert name in svg
    assert "log scale" in svg


def test_line_svg_shows_the_documents_barrier_and_both_endpoints(mpl, tmp_path):
    svg = _plot(line_doc(), tmp_path / "line.svg").decode()
    assert "barrier 0.777" in svg and "alpha_max = 0.625" in svg
    assert "A: seed0/final.pt" in svg and "B: seed1/final.pt" in svg
    assert "eval loss" in svg and "train accuracy" in svg


def test_curve_svg_names_the_control_point(mpl, tmp_path):
    svg = _plot(curve_doc(), tmp_path / "curve.svg").decode()
    assert "via curve/control.pt" in svg and "barrier 0.0123" in svg
    assert "before alignment 2.5" in svg


def test_pairs_svg_has_names_and_the_numbers_in_cells(mpl, tmp_path):
    svg = _plot(pairs_doc(), tmp_path / "pairs.svg").decode()
    for name in ("seed0/final.pt", "seed1/final.pt", "seed2/final.pt"):
        assert name in svg
    assert ">0.31<" in svg and ">1.25<" in svg and ">–<" in svg  # a null cell is a dash


def test_plot_refuses_nothing_valid(mpl, tmp_path):
    from landscape_cli.report.plot import check_destination

    for suffix in ("png", "svg", "pdf", "PNG"):
        dest = check_destination(tmp_path / f"x.{suffix}", [tmp_path / "a.pt"])
        assert dest.path.name == f"x.{suffix}" and dest.option == "--plot"


def test_a_large_plane_is_shown_on_a_coarser_map_in_colour():
    doc = plane_doc()
    plane = doc["results"]["plane"]
    plane["x"] = [-1 + 2 * i / 60 for i in range(61)]
    plane["y"] = [-1 + 2 * j / 50 for j in range(51)]
    plane["loss"] = [[1 + x * x + y * y for x in plane["x"]] for y in plane["y"]]
    plane["directions"] = "random"
    extras = interpolate_extras(doc["results"])
    drawing = next(e for e in extras if not isinstance(e, str)).plain.splitlines()
    rows = [line.split("│", 1)[1] for line in drawing if "│" in line]
    assert len(rows) == curve_view.MAP_ROWS and len(rows[0]) == curve_view.MAP_COLUMNS
    assert sum(row.count(mark) for row in rows for mark in "ABC") == 3
    out = render(doc, "table", color=True, result=InterpolateResult)
    assert "\x1b[" in out and "random directions, 61 × 51 grid" in out
    assert "loss from 1 to 3 (log scale)" not in out and "loss from 1 to 3:" in out  # 3× is linear
