"""`spectrum --per-block`: each diagonal block's top eigenvalues against eigvalsh of that block
(block-diagonal quadratics, the real MLP's dense Hessian), the Jensen–Shannon heterogeneity,
the block types, the shared products, and the --blocks spec's errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.exact import relative_error
from helpers.quadratic import symmetric_with_spectrum, write_block_quadratic
from helpers.samples import MLP_CKPT

from landscape_cli.analyses.blocks import form_blocks, js_heterogeneity, parameter_type, parse_blocks
from landscape_cli.analyses.spectrum import spectrum
from landscape_cli.errors import LandscapeError
from landscape_cli.linalg.lockstep import in_lockstep, plan_width
from landscape_cli.linalg.memory import NoMemory
from landscape_cli.linalg.operator import CallableOperator, DenseOperator, restrict
from landscape_cli.results.density import DensityResult

#: a block-diagonal Hessian over named parameters: each block's spectrum, chosen
SPECTRA = {
    "embed.weight": [0.5 * i for i in range(1, 13)],
    "attn.q.weight": [-3.0, -1.0, 0.25, 2.0, 7.5, 9.0],
    "attn.q.bias": [4.0, 8.5, 1.0],
    "mlp.fc.weight": [0.1 * i - 0.4 for i in range(15)] + [20.0],
}


def _eigvalsh(spectra: dict[str, list[float]], names: list[str], seed: int = 0) -> torch.Tensor:
    """The eigenvalues of the diagonal block of the parameters ``names`` (ascending): their
    blocks' own, since the Hessian is block-diagonal over the parameters."""
    order = list(spectra)
    return torch.linalg.eigvalsh(torch.block_diag(*(
        symmetric_with_spectrum(spectra[n], seed + order.index(n)) for n in names)))


@pytest.fixture
def quadratic(tmp_path):
    return write_block_quadratic(tmp_path, SPECTRA, seed=2)


def test_each_tensor_block_equals_eigvalsh_of_that_block(cli, quadratic):
    config, ckpt = quadratic
    code, doc, ran = cli("spectrum", ckpt, "-c", config, "--per-block", "--top", "3",
                         "--tol", "1e-10", "--json")
    assert code == 0, ran.detail()
    results = doc["results"]
    blocks = {b["name"]: b for b in results["blocks"]}
    assert set(blocks) == set(SPECTRA) and results["blocks_by"] == "tensor"
    for name, block in blocks.items():
        exact = _eigvalsh(SPECTRA, [name], seed=2)
        assert block["n_params"] == len(SPECTRA[name]) and block["parameters"] == [name]
        assert relative_error(block["top_eigenvalues"], exact[-3:].flip(0)) < 1e-9
        assert all(block["top_converged"]) and max(block["top_residuals"]) < 1e-8
    # the whole Hessian's top eigenvalues are the blocks' together
    assert results["top_eigenvalues"][:2] == pytest.approx([20.0, 9.0], rel=1e-9)
    # listed by type: embedding, attention q, mlp, other (a bias of attn.q is attention_q too)
    assert [b["type"] for b in results["blocks"]] == ["embedding", "attention_q", "attention_q",
                                                        "mlp"]
    # the blocks' products shared: far fewer engine calls than products
    steps = sum(b["lanczos_steps"] for b in results["blocks"])
    assert doc["cost"]["hvps"] >= steps + results["lanczos_steps"]
    assert doc["cost"]["hvp_blocks"] <= results["lanczos_steps"] + 1 + max(
        b["lanczos_steps"] for b in results["blocks"]) + 1
    assert "heterogeneity" not in results


def test_module_and_named_glob_blocks(cli, quadratic):
    config, ckpt = quadratic
    code, doc, ran = cli("spectrum", ckpt, "-c", config, "--blocks", "module", "--top", "2",
                         "--tol", "1e-10", "--json")
    assert code == 0, ran.detail()
    blocks = {b["name"]: b for b in doc["results"]["blocks"]}
    assert blocks["attn.q"]["parameters"] == ["attn.q.weight", "attn.q.bias"]
    assert blocks["attn.q"]["top_eigenvalues"] == pytest.approx([9.0, 8.5], rel=1e-9)
    assert blocks["attn.q"]["n_params"] == 9 and set(blocks) == {"embed", "attn.q", "mlp.fc"}

    code, doc, ran = cli("spectrum", ckpt, "-c", config, "--per-block", "--blocks",
                         "w=*.weight,b=*.bias", "--top", "2", "--tol", "1e-10", "--json")
    assert code == 0, ran.detail()
    blocks = {b["name"]: b for b in doc["results"]["blocks"]}
    assert set(blocks) == {"w", "b"}  # every parameter matched: no 'other' block
    assert blocks["w"]["top_eigenvalues"] == pytest.approx([20.0, 9.0], rel=1e-9)
    assert blocks["b"]["top_eigenvalues"] == pytest.approx([8.5, 4.0], rel=1e-9)
    assert blocks["w"]["type"] == "other"  # weights of every kind together

    code, doc, _ = cli("spectrum", ckpt, "-c", config, "--blocks", "q=attn.q.*", "--top", "1",
                       "--json")
    rest = {b["name"]: b["n_params"] for b in doc["results"]["blocks"]}
    assert code == 0 and rest == {"q": 9, "other": 12 + 16}


def test_identical_blocks_have_heterogeneity_zero_and_different_ones_more(cli, tmp_path):
    same = [-1.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 9.5]
    args = ("--per-block", "--density", "--runs", "3", "--steps", "8", "--top", "1", "--json")
    # identical blocks: the same matrix (spectrum and eigenvectors), the same start vectors
    config, ckpt = write_block_quadratic(tmp_path, {"a.weight": same, "b.weight": same,
                                                    "c.weight": same}, same_basis=True)
    code, doc, ran = cli("spectrum", ckpt, "-c", config, *args)
    assert code == 0, ran.detail()
    results = doc["results"]
    assert results["heterogeneity"] == pytest.approx(0.0, abs=1e-6)
    assert all(b["density"]["runs"] == 3 for b in results["blocks"])

    (tmp_path / "other").mkdir()
    config, ckpt = write_block_quadratic(tmp_path / "other", {
        "a.weight": same, "b.weight": [100 + x for x in same], "c.weight": same}, same_basis=True)
    code, doc, ran = cli("spectrum", ckpt, "-c", config, *args, "--fail-if", "heterogeneity>0.5")
    # two of three pairs have (almost) disjoint densities: JS distance 1 each, mean 2/3
    assert code == 1, ran.detail()
    assert doc["results"]["heterogeneity"] == pytest.approx(2 / 3, abs=1e-3)


def test_js_heterogeneity_definition():
    def density(nodes, weights):
        return DensityResult(grid=[], values=[], nodes=nodes, weights=weights, negative_mass=0.0,
                             negative_threshold=0.0, negative_weight_ratio=0.0,
                             negative_mass_stderr=None, sigma=1.0, runs=len(nodes), steps=2,
                             lambda_min=min(map(min, nodes)), lambda_max=max(map(max, nodes)),
                             reorthogonalized=True, notes=[])

    one = density([[0.0, 1.0]], [[0.5, 0.5]])
    same_measure = density([[0.0], [1.0]], [[1.0], [1.0]])  # two runs of one node each
    far = density([[1000.0]], [[1.0]])
    assert js_heterogeneity([one, same_measure], steps=2, sigma=0.1)[0] == pytest.approx(0, abs=1e-9)
    assert js_heterogeneity([one, far], steps=2, sigma=0.1)[0] == pytest.approx(1.0, abs=1e-9)
    # half the mass shared: p = ½δ₀ + ½δ₁ against q = δ₀, at a σ far below the nodes' spacing
    point = density([[0.0]], [[1.0]])
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])
    m = (p + q) / 2
    jsd = 0.5 * float((torch.xlogy(p, p / m)).sum() + (torch.xlogy(q, q / m)).sum()) / math.log(2)
    value, sigma = js_heterogeneity([one, point], steps=2, sigma=1e-3)
    assert value == pytest.approx(math.sqrt(jsd), rel=1e-6) and sigma == 1e-3
    # default σ: the common range over the steps
    assert js_heterogeneity([one, far], steps=2)[1] == pytest.approx(500.0)


def test_mlp_per_tensor_top_eigenvalues_equal_the_dense_diagonal_blocks(cli, mlp_exact):
    problem, hessian, _ = mlp_exact
    code, doc, ran = cli("spectrum", MLP_CKPT, "--dtype", "float64", "--set",
                         "data.max_samples=600", "--per-block", "--top", "2", "--tol", "1e-9",
                         "--json")
    assert code == 0, ran.detail()
    blocks = {b["name"]: b for b in doc["results"]["blocks"]}
    assert set(blocks) == set(problem.names)
    for name in problem.names:
        part = problem.groups[name]
        exact = torch.linalg.eigvalsh(hessian[part, part])
        assert relative_error(blocks[name]["top_eigenvalues"], exact[-2:].flip(0)) < 1e-6, name


def test_lockstep_gives_each_block_its_own_lanczos_in_shared_products():
    matrix = symmetric_with_spectrum([float(i) for i in range(-5, 25)], seed=4)
    calls = []
    dense = DenseOperator(matrix)
    operator = CallableOperator(lambda block: calls.append(block.shape[0]) or dense(block),
                                size=30)
    blocks = [[slice(0, 10)], [slice(10, 12), slice(20, 30)], [slice(12, 20)]]
    found = in_lockstep(operator, blocks,
                        lambda b, view: spectrum(view, top=2, tol=1e-10, seed=b).top_eigenvalues)
    for slices, values in zip(blocks, found):
        alone = spectrum(restrict(dense, slices), top=2, tol=1e-10, seed=0).top_eigenvalues
        assert values == pytest.approx(alone, rel=1e-10)
    assert max(calls) == 3 and len(calls) <= 13  # all three blocks' rows in one product

    def failing(b, view):
        if b == 1:
            raise ValueError("block 1 fails")
        return spectrum(view, top=1, seed=0)

    with pytest.raises(ValueError, match="block 1 fails"):
        in_lockstep(operator, blocks, failing)


def test_lockstep_width_follows_the_memory_budget():
    operator = DenseOperator(torch.eye(100, dtype=torch.float64), memory=2 * 8 * 100 * 3 * 2)
    assert plan_width(operator, rows=1, count=10) == (3, 2 * 8 * 100 * 3 // 3)
    assert plan_width(DenseOperator(torch.eye(100)), rows=1, count=10) == (10, None)
    calls = []
    operator = CallableOperator(lambda block: calls.append(block.shape[0]) or block, size=100,
                                memory=2 * 8 * 100 * 2 * 2)
    in_lockstep(operator, [[slice(i * 10, i * 10 + 10)] for i in range(5)],
                lambda b, view: spectrum(view, top=1, seed=0))
    assert max(calls) == 2  # two blocks at a time


def test_lockstep_width_counts_what_each_block_holds_and_refuses_before_any_product():
    """Each algorithm's own vectors (``least``, the largest block's) count beside the shared
    rows: 3 fit by the rows alone, 2 with 1,600 bytes each of their own; where even one does
    not fit, one line before any product (the GPT-2 per-block run failed after 8 minutes)."""
    rows_bytes = 2 * 8 * 100
    operator = DenseOperator(torch.eye(100, dtype=torch.float64), memory=rows_bytes * 6)
    assert plan_width(operator, rows=1, count=10)[0] == 3
    assert plan_width(operator, rows=1, count=10, least=2400)[0] == 2
    with pytest.raises(NoMemory, match="diagonal block"):
        plan_width(operator, rows=1, count=10, least=rows_bytes * 6)

    def never(block):
        raise AssertionError("a product was asked for")

    with pytest.raises(NoMemory):
        in_lockstep(CallableOperator(never, size=100, memory=rows_bytes * 2),
                    [[slice(0, 50)], [slice(50, 100)]], lambda b, view: spectrum(view, top=1),
                    least=lambda size: size * 8 * 20)


#: parameter name and its module's class → its block type, in the spellings of the models
#: users bring (GPT-2, LLaMA, BERT, nn.MultiheadAttention) and of the samples
TYPES = {
    "transformer.wte.weight": ("Embedding", "embedding"),
    "tokens.weight": ("Embedding", "embedding"),
    "transformer.h.0.ln_1.weight": ("LayerNorm", "norm"),
    "model.layers.0.input_layernorm.weight": ("LlamaRMSNorm", "norm"),
    "transformer.h.0.attn.c_attn.weight": ("Conv1D", "attention_qkv"),
    "transformer.h.0.attn.c_proj.bias": ("Conv1D", "attention_out"),
    "transformer.h.0.mlp.c_fc.weight": ("Conv1D", "mlp"),
    "model.layers.3.self_attn.k_proj.weight": ("Linear", "attention_k"),
    "model.layers.3.self_attn.o_proj.weight": ("Linear", "attention_out"),
    "model.layers.3.mlp.gate_proj.weight": ("Linear", "mlp"),
    "encoder.layer.0.attention.self.value.weight": ("Linear", "attention_v"),
    "encoder.layer.0.attention.output.dense.weight": ("Linear", "attention_out"),
    "blocks.0.attn.in_proj_weight": ("MultiheadAttention", "attention_qkv"),
    "blocks.0.attn.q.weight": ("Linear", "attention_q"),
    "head.weight": ("Linear", "other"),
    "0.weight": ("Linear", "other"),
}


def test_block_types_from_module_kinds_and_names():
    found = {name: parameter_type(name, kind) for name, (kind, _) in TYPES.items()}
    assert found == {name: expected for name, (_, expected) in TYPES.items()}


@pytest.mark.parametrize("spec, message", [
    ("w=", "expected tensor, module or NAME=GLOB"),
    ("=*.weight", "expected tensor, module or NAME=GLOB"),
    ("modules", "expected tensor, module or NAME=GLOB"),
    ("other=*.bias", "kept for the parameters no group matches"),
])
def test_bad_blocks_spec_is_one_line_exit_2(cli, spec, message):
    code, _, ran = cli("spectrum", MLP_CKPT, "--blocks", spec, "--json")
    assert code == 2 and message in ran.stderr and len(ran.stderr.strip().splitlines()) == 1
    assert ran.stdout == ""


def test_blocks_that_match_nothing_or_overlap_are_refused():
    names = ["a.weight", "a.bias", "b.weight"]
    with pytest.raises(LandscapeError, match="no analysed parameter matches group 'c'"):
        form_blocks(parse_blocks("w=*.weight,c=c.*"), names)
    with pytest.raises(LandscapeError, match=r"'a\.weight' matches both 'a' and 'w'"):
        form_blocks(parse_blocks("a=a.*,w=*.weight"), names)
    assert form_blocks(parse_blocks("w=a.weight,w=b.*"), names) == {
        "w": ["a.weight", "b.weight"], "other": ["a.bias"]}


def test_per_block_table_and_save_vectors(cli, quadratic, tmp_path):
    from safetensors import safe_open

    config, ckpt = quadratic
    out = tmp_path / "top.safetensors"
    code, doc, ran = cli("spectrum", ckpt, "-c", config, "--per-block", "--top", "2",
                         "--save-vectors", out, "--json")
    assert code == 0, ran.detail()
    # --save-vectors keeps its meaning: the whole Hessian's Ritz vectors, not the blocks'
    with safe_open(str(out), "pt") as saved:
        names = saved.keys()  # a list (safe_open cannot be iterated)
    assert sorted(k for k in names if k.startswith("top_1/")) == sorted(f"top_1/{n}" for n in SPECTRA)
    table = cli("spectrum", ckpt, "-c", config, "--per-block", "--top", "2", "--format", "csv")[2]
    rows = [line.split(",") for line in table.stdout.splitlines()]
    header = rows[0]
    blocks = [dict(zip(header, r)) for r in rows[1:] if r[header.index("end")] == "block"]
    assert len(blocks) == 2 * len(SPECTRA)
    assert blocks[0]["type"] == "embedding" and blocks[0]["block"] == "embed.weight"
    assert float(blocks[0]["eigenvalue"]) == pytest.approx(
        doc["results"]["blocks"][0]["top_eigenvalues"][0], rel=1e-12)
