"""The fused-MoE Triton kernel (`profiling.triton_moe`) against the torch reference.

Without a GPU the kernel runs under the Triton interpreter (TRITON_INTERPRET=1, set here before triton is
imported), which is slow: shapes are kept tiny. The interpreter does not handle bf16, so fp32 and fp16 only.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton`
pytest.importorskip("triton")

from moesim.profiling.triton_moe import align_by_expert, torch_moe, triton_available, triton_moe  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def kernel_runs() -> None:
    """Skip the kernel tests when neither CUDA nor the interpreter can run the kernel."""
    if not triton_available():
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    x, w13, w2, weights, ids = _problem(2, 16, 16, 2, 1, torch.float32, seed=0)
    try:
        triton_moe(x, w13, w2, weights, ids)
    except Exception as exc:  # e.g. triton imported before TRITON_INTERPRET was set
        pytest.skip(f"Triton kernel cannot run here: {exc!r}")


def _problem(tokens, hidden, inter, experts, top_k, dtype, seed, unused=()):
    """Random activations, weights and routing; experts in `unused` get no tokens."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=gen)
    w13 = torch.randn(experts, 2 * inter, hidden, generator=gen) / hidden**0.5
    w2 = torch.randn(experts, hidden, inter, generator=gen) / inter**0.5
    allowed = torch.tensor([e for e in range(experts) if e not in unused])
    scores = torch.rand(tokens, allowed.numel(), generator=gen)
    ids = allowed[scores.topk(top_k, dim=1).indices]  # distinct experts per token
    weights = torch.softmax(torch.randn(tokens, top_k, generator=gen), dim=1)
    to = {"device": DEVICE}
    return x.to(dtype=dtype, **to), w13.to(dtype=dtype, **to), w2.to(dtype=dtype, **to), weights.to(**to), ids.to(**to)


def _dense_moe(x, w13, w2, weights, ids):
    """The naive definition: a loop over tokens and their experts, in fp64."""
    inter = w2.shape[2]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            h = w13[e].double() @ x[t].double()
            out[t] += float(weights[t, j]) * (w2[e].double() @ (torch.nn.functional.silu(h[:inter]) * h[inter:]))
    return out


@pytest.mark.parametrize("block_m", [4, 16])
def test_align_by_expert(block_m):
    num_experts = 6
    ids = torch.tensor([[0, 3], [3, 5], [0, 5], [3, 0], [5, 3], [0, 3], [3, 5]])  # experts 1, 2, 4 unused
    num_pairs = ids.numel()
    flat = ids.reshape(-1)
    sorted_ids, block_expert, num_padded = align_by_expert(ids, num_experts, block_m)

    assert sorted_ids.dtype == block_expert.dtype == torch.int32
    assert sorted_ids.numel() == num_padded == block_expert.numel() * block_m
    real = sorted_ids[sorted_ids < num_pairs].long()
    assert sorted(real.tolist()) == list(range(num_pairs))  # every pair exactly once
    assert bool((sorted_ids <= num_pairs).all())  # everything else is the sentinel

    counts = torch.bincount(flat, minlength=num_experts)
    expected_blocks = [e for e in range(num_experts) for _ in range(-(-int(counts[e]) // block_m))]
    assert block_expert.tolist() == expected_blocks  # ascending, no blocks for experts 1, 2, 4
    for b, e in enumerate(block_expert.tolist()):
        block = sorted_ids[b * block_m : (b + 1) * block_m].long()
        pairs = block[block < num_pairs]
        assert bool((flat[pairs] == e).all())  # each block holds one expert's pairs
    for e in range(num_experts):  # each run is the expert's pairs, in order, then padding to block_m
        run = sorted_ids.view(-1, block_m)[block_expert == e].reshape(-1)
        assert run.numel() % block_m == 0 and run.numel() - int(counts[e]) < block_m
        assert run[: int(counts[e])].tolist() == torch.nonzero(flat == e).squeeze(1).tolist()


def test_torch_moe_matches_dense():
    x, w13, w2, weights, ids = _problem(7, 12, 10, 4, 2, torch.float64, seed=1, unused=(2,))
    got = torch_moe(x, w13, w2, weights, ids)
    assert torch.allclose(got.cpu(), _dense_moe(x.cpu(), w13.cpu(), w2.cpu(), weights.cpu(), ids.cpu()))


CASES = [  # tokens, hidden, inter, experts, top_k, unused experts
    (5, 40, 24, 4, 1, (1,)),
    (21, 48, 40, 6, 2, (0, 4)),
    (3, 16, 16, 8, 2, ()),
]


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.float16, 2e-2)])
@pytest.mark.parametrize("case", CASES)
def test_triton_moe_matches_torch(kernel_runs, case, dtype, tol):
    tokens, hidden, inter, experts, top_k, unused = case
    x, w13, w2, weights, ids = _problem(tokens, hidden, inter, experts, top_k, dtype, seed=tokens, unused=unused)
    got = triton_moe(x, w13, w2, weights, ids)
    want = torch_moe(x, w13, w2, weights, ids)
    assert got.shape == x.shape and got.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


def test_triton_moe_block_sizes(kernel_runs):
    """Other tile sizes give the same answer (BLOCK_M larger than any expert's run, BLOCK_K > H)."""
    x, w13, w2, weights, ids = _problem(6, 20, 18, 3, 2, torch.float32, seed=3)
    want = torch_moe(x, w13, w2, weights, ids)
    got = triton_moe(x, w13, w2, weights, ids, block_m=32, block_n=16, block_k=64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
