"""``landscape report`` (issue 30 §5): one self-contained page whose figures and tables are all
there, whose tables' numbers are the JSON's, and which stays small for a 200-checkpoint sweep;
and, where a browser can be had, a page that opens without a console error with every figure
drawn."""

from __future__ import annotations

import json
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers.adversarial import assert_one_error
from helpers.runners import invoke
from helpers.samples import CONFIGS, MLP_CKPT, ROOT

pytest.importorskip("matplotlib", reason="landscape report draws with matplotlib (the [plot] extra)")

from landscape_cli.sweep.flat import row_of

SMALL = ("--set", "data.max_samples=200", "-c", CONFIGS / "mlp.yaml")
MLP = [ROOT / "sample_checkpoints" / "mlp" / f"seed{s}_epoch{e}.pt" for s, e in (
    (0, "100"), (1, "100"), (0, "010"))]


class Page(HTMLParser):
    """The figures (with their SVG's size) and the tables (each cell's data-value) of a page."""

    def __init__(self):
        super().__init__()
        self.figures: list[tuple[str, int]] = []
        self.tables: list[tuple[str, list[str], list[list[object]]]] = []
        self.urls: list[str] = []
        self._figure, self._svg, self._cell = None, 0, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.urls += [v for k, v in attrs.items() if k in ("src", "href") and v]
        if tag == "figure":
            self._figure, self._svg = attrs.get("data-figure"), 0
        elif self._figure is not None:
            self._svg += 1
        if tag == "table":
            self.tables.append((attrs["data-table"], [], []))
        elif tag == "tr" and self.tables:
            self.tables[-1][2].append([])
        elif tag == "th":
            self._cell = "header"
        elif tag == "td":
            self.tables[-1][2][-1].append(json.loads(attrs["data-value"]))

    def handle_data(self, data):
        if self._cell == "header":
            self.tables[-1][1].append(data)

    def handle_endtag(self, tag):
        if tag == "th":
            self._cell = None
        if tag == "figure":
            self.figures.append((self._figure, self._svg))
            self._figure = None


def parsed(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def json_of(*args) -> dict:
    ran = invoke([*args, "--json"])
    assert ran.returncode == 0, ran.detail()
    return json.loads(ran.stdout)


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("reports")
    made = {
        "density.json": json_of("spectrum", MLP_CKPT, *SMALL, "--top", "2", "--density", "--runs", "2",
                                "--steps", "15"),
        "blocks.json": json_of("spectrum", MLP_CKPT, *SMALL, "--per-block", "--top", "2"),
        "curve.json": json_of("interpolate", MLP[0], MLP[1], *SMALL, "--alphas", "0:1:5"),
        "plane.json": json_of("interpolate", MLP[0], MLP[1], MLP[2], *SMALL, "--plane", "--grid", "0:1:4"),
        "matrix.json": json_of("interpolate", MLP[0], MLP[1], MLP[2], *SMALL, "--alphas", "0:1:3"),
        "sharpness.json": json_of("sharpness", MLP_CKPT, *SMALL, "--measures", "lambda_max,average_case",
                                  "--samples", "8"),
    }
    for name, doc in made.items():
        (folder / name).write_text(json.dumps(doc))
    for step in (10, 20, 30):
        (folder / f"ck_step{step}.pt").write_bytes(MLP_CKPT.read_bytes())
    assert invoke(["batch", folder / "*.pt", "--command", "sharpness", "--measures", "lambda_max,grad_norm",
                   *SMALL, "-o", folder / "sweep.jsonl", "-q"]).returncode == 0
    return folder, [folder / "sweep.jsonl", *(folder / name for name in made)]


def test_every_figure_and_table_is_there_with_the_jsons_numbers(reports, tmp_path):
    folder, files = reports
    out = tmp_path / "report.html"
    ran = invoke(["report", *files, "-o", out])
    assert ran.returncode == 0, ran.detail()
    page = parsed(out)
    assert [name for name, _ in page.figures] == ["trend", "density", "blocks", "curve", "plane",
                                                  "barrier_matrix"]
    assert all(elements > 20 for _, elements in page.figures), page.figures  # drawn, not empty
    assert page.urls == [] and not re.search(r"https?://(?!www\.w3\.org/)", out.read_text())

    sweep = [json.loads(line) for line in (folder / "sweep.jsonl").read_text().splitlines()]
    name, header, rows = page.tables[0]
    assert name == "sweep" and len(rows[1:]) == 3
    for cells, line in zip(rows[1:], sorted(sweep, key=lambda x: x["checkpoint"]["path"])):
        shown = dict(zip(header, cells))
        assert shown["checkpoint"] == line["checkpoint"]["path"]
        assert shown["lambda_max"] == line["results"]["measures"]["lambda_max"]["value"]
        assert shown["lambda_max.residual"] == line["results"]["measures"]["lambda_max"]["residual"]
        assert shown["loss"] == line["results"]["loss"]

    scalars = [t for t in page.tables if t[0] == "scalars"]
    assert len(scalars) == 6
    for (_, _, rows), path in zip(scalars, files[1:]):
        doc = json.loads(path.read_text())
        expected = {k: v for k, v in row_of(doc, path).items() if isinstance(v, (int, float, bool))
                    and k not in ("global_step", "epoch", "step")}
        assert {r[0]: r[1] for r in rows[1:]} == expected  # every scalar, errors included
    sharpness = [t for t in page.tables if t[0] == "results"][-1]
    measures = json.loads((folder / "sharpness.json").read_text())["results"]["measures"]
    assert {r[0]: r[1] for r in sharpness[2][1:]} == {k: m["value"] for k, m in measures.items()}


def big_page(folder: Path, tmp_path: Path) -> Path:
    """The page of a 200-checkpoint sweep (one real line, its step and λ_max varied)."""
    line = json.loads((folder / "sweep.jsonl").read_text().splitlines()[0])
    with open(tmp_path / "big.jsonl", "w") as big:
        for step in range(200):
            line["checkpoint"] = {**line["checkpoint"], "path": f"run/step{step}.pt", "global_step": step}
            line["results"]["measures"]["lambda_max"]["value"] = 1 + step / 100
            big.write(json.dumps(line) + "\n")
    ran = invoke(["report", tmp_path / "big.jsonl", "-o", tmp_path / "big.html"])
    assert ran.returncode == 0, ran.detail()
    return tmp_path / "big.html"


def test_a_200_checkpoint_sweep_makes_a_small_page(reports, tmp_path):
    page_file = big_page(reports[0], tmp_path)
    assert page_file.stat().st_size < 2_000_000
    page = parsed(page_file)
    assert len(page.tables[0][2]) == 201


def test_bad_input_is_one_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"command": "spectrum"}\nnot json\n')
    assert_one_error(invoke(["report", tmp_path / "bad.jsonl", "-o", tmp_path / "r.html"]),
                     ["bad.jsonl:2", "not a JSON report"])
    assert_one_error(invoke(["report", tmp_path / "missing.json", "-o", tmp_path / "r.html"]),
                     ["missing.json"])


def _browser() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome")
                 if (found := shutil.which(name))), None)


def test_the_page_opens_in_a_browser_without_errors(reports, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    browser_path = _browser()
    if browser_path is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    folder, files = reports
    out = tmp_path / "report.html"
    assert invoke(["report", *files, "-o", out]).returncode == 0
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.as_uri(), wait_until="load")
        sizes = page.eval_on_selector_all("figure svg", "els => els.map(e => e.getBoundingClientRect())"
                                                        ".map(r => [r.width, r.height])")
        drawn = page.eval_on_selector_all("figure svg",
                                          "els => els.map(e => e.querySelectorAll('path').length)")
        started = time.perf_counter()
        page.goto(big_page(folder, tmp_path).as_uri(), wait_until="load")
        opened = time.perf_counter() - started
        rows = page.eval_on_selector_all("table[data-table=sweep] tbody tr", "els => els.length")
        browser.close()
    assert errors == []
    assert len(sizes) == 6 and all(w > 100 and h > 100 for w, h in sizes), sizes
    assert all(n > 5 for n in drawn), drawn
    assert rows == 200 and opened < 2, (rows, opened)
