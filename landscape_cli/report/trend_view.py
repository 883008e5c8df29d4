"""The view of a sweep's trend (``landscape batch``): Markdown for a CI job summary, with the
sparkline of ``report.curve_view``."""

from __future__ import annotations

from typing import Any

from landscape_cli.report.curve_view import sparkline


def markdown_summary(rows: list[dict[str, Any]], command: str, metric: str,
                     edge: dict[str, Any] | None = None) -> str:
    """The trend as Markdown (a CI job summary): ``rows`` of ``sweep.trend.trend``, the name of
    the number they follow, and the first row at the edge of stability (``trend.first_at_edge``)."""
    failed = [r for r in rows if r["status"] != "ok" or r["failed"]]
    out = [f"### landscape batch --command {command}", "",
           f"{len(rows)} checkpoint(s), {sum(r['status'] == 'ok' for r in rows)} ok, "
           f"{sum(r['status'] != 'ok' for r in rows)} failed, "
           f"{sum(bool(r['failed']) for r in rows)} with violated gates. "
           f"Trend of {metric}: `{sparkline([r['value'] for r in rows])}`", "",
           f"| checkpoint | step | {metric} | status |", "|---|---|---|---|"]
    for r in rows:
        value = "–" if r["value"] is None else f"{r['value']:.6g}"
        step = "–" if r["step"] is None else f"{r['step']:g}"
        status = r["status"] if r["status"] != "ok" else ("gate failed: " + ", ".join(r["failed"])
                                                          if r["failed"] else "ok")
        if r["error"]:
            status += f": {r['error']}"
        out.append(f"| `{r['checkpoint']}` | {step} | {value} | {status} |")
    if edge is not None:
        at = f"step {edge['step']:g}" if edge["step"] is not None else "checkpoint"
        out += ["", f"{metric} first reaches 1 (the edge of stability) at {at}: "
                    f"`{edge['checkpoint']}` ({edge['value']:.4g})."]
    elif metric == "stability_ratio":
        out += ["", f"{metric} stays below 1 (the edge of stability) at every checkpoint."]
    if failed:
        out += ["", f"{len(failed)} checkpoint(s) need attention."]
    return "\n".join(out) + "\n"
