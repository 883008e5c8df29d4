"""The runs whose ``results`` must not change under a restructuring (issue 26): each command on
the samples, in process through ``landscape_cli.analyze`` on one thread (the reduction order,
hence the last digits, depends on the thread count). ``python tests/golden/runs.py`` writes
``tests/golden/reports/NAME.json``; ``test_golden.py`` compares against them byte for byte."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_checkpoints"
MLP = str(SAMPLES / "mlp" / "seed0_epoch100.pt")
MLP_B = str(SAMPLES / "mlp" / "seed1_epoch100.pt")
MLP_C = str(SAMPLES / "mlp" / "seed0_epoch010.pt")
CNN = str(SAMPLES / "cnn_bn" / "final.pt")
TRANSFORMER = str(SAMPLES / "char_transformer" / "final.pt")

#: name → (command, checkpoint(s), options)
RUNS: dict[str, tuple[str, str | list[str], dict]] = {
    "spectrum_mlp": ("spectrum", MLP, {"top": 3, "bottom": 2}),
    "spectrum_mlp_density": ("spectrum", MLP, {"top": 1, "density": True, "runs": 3, "steps": 30}),
    "spectrum_cnn": ("spectrum", CNN, {"top": 2, "max_hvps": 40}),
    "spectrum_cnn_train_stats": ("spectrum", CNN, {"top": 1, "max_hvps": 30, "set": ["bn=train-stats"]}),
    "spectrum_transformer": ("spectrum", TRANSFORMER, {"top": 2, "max_hvps": 30}),
    "spectrum_mlp_params": ("spectrum", MLP, {"top": 2, "params": ["0.*"], "dtype": "float64"}),
    "trace_mlp": ("trace", MLP, {"max_hvps": 60}),
    "trace_mlp_per_layer": ("trace", MLP, {"max_hvps": 30, "per_layer": True, "method": "hutchinson"}),
    "trace_cnn": ("trace", CNN, {"max_hvps": 30}),
    "sharpness_mlp": ("sharpness", MLP, {}),
    "sharpness_cnn": ("sharpness", CNN, {"measures": "lambda_max,grad_norm,average_case,eps_sharpness,"
                                                      "worst_case_adaptive"}),
    "interpolate_line": ("interpolate", [MLP, MLP_B], {"alphas": "-0.25:1.25:7"}),
    "interpolate_align": ("interpolate", [MLP, MLP_B], {"alphas": "0:1:5", "align": "weights"}),
    "interpolate_plane": ("interpolate", [MLP, MLP_B, MLP_C], {"plane": True, "grid": "-0.5:1.5:5"}),
    "interpolate_random_plane": ("interpolate", [MLP], {"plane": True, "grid": "-1:1:4"}),
    "interpolate_cnn_recalibrate": ("interpolate", [CNN, CNN], {"alphas": "0:1:3", "recalibrate_bn": True}),
    "classify_mlp": ("classify-critical-point", MLP, {}),
    "classify_cnn": ("classify-critical-point", CNN, {"max_hvps": 40}),
}


def run(name: str) -> dict:
    """The ``results`` of one run, as its JSON document holds them."""
    import torch

    import landscape_cli

    command, checkpoint, options = RUNS[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = landscape_cli.analyze(command, checkpoint, **options)
    finally:
        torch.set_num_threads(threads)
    # checkpoint paths appear in some results (interpolate): written relative to the project
    return json.loads(report.to_json().replace(json.dumps(str(ROOT))[1:-1], "ROOT"))["results"]


def dumps(results: dict) -> str:
    return json.dumps(results, indent=1, sort_keys=True) + "\n"


def main(names: list[str]) -> None:
    out = Path(__file__).parent / "reports"
    out.mkdir(exist_ok=True)
    for name in names or RUNS:
        (out / f"{name}.json").write_text(dumps(run(name)))
        print(name, file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
