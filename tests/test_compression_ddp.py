"""The codec under data parallelism (issue 13): 2 gloo processes = 1 process on the union of
their batches, for the codebooks and for the solver's balanced generator loss.

Measured before the fixes: the ``encodec`` package's codebook updates under DDP (whose buffer
broadcast keeps rank 0's) left, after one step of tests/fixtures/codec_ddp_steps.py, EMA cluster
sizes summing to 157.7 instead of 272.8 (rank 0's 128 latent vectors instead of the union's 256)
and codebooks up to 0.14 apart (entries of size 0.2); the balancer, averaging the ranks' gradient
norms, halved the balanced gradient against the commitment loss: parameters 2.0e-3 apart after
one step. After them: cluster sizes equal, codebooks within 5.4e-7 and parameters within 1.2e-7
after 6 steps (L1 + commitment); parameters within 1.9e-7 after a balanced step.

Also the two solver-side pieces the 2-process compression_tiny run needed to match 1 process
(tests/test_ddp_presets.py): relative feature matching divided by the union batch's feature sizes,
and the codec's training draws seeded from the step rather than taken from the global RNG.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from musicgen.losses import feature_matching_loss, feature_scales
from tests.fixtures import codec_ddp_steps
from tests.test_compression_solver import fixed_batch, small_solver

REPO = Path(__file__).resolve().parents[1]
STEPS = 6
BUFFERS = ("cluster_size", "embed_avg", "embed", "inited")
# Counts are sums of integers, computed identically; vector sums and gradients are summed in
# another order (gloo adds the ranks' partial sums), about 1 ulp each, which later steps carry.
# Measured: 5.4e-7 on codebooks of size 0.2, 1.2e-7 on parameters (6 Adam steps at lr 1e-3).
TOLERANCE = 1e-5


def max_differences(one: dict, other: dict) -> dict[str, float]:
    assert one.keys() == other.keys()
    return {name: (one[name] - other[name]).abs().max().item() for name in one}


def is_buffer(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in BUFFERS


def test_codebook_statistics_are_summed_over_ranks(tmp_path: Path) -> None:
    """The quantizer alone on 2 processes with 3 and 1 items (k-means init, dead-code refills,
    EMA updates)."""
    codec_ddp_steps.main(tmp_path, 2, STEPS, "quantizer")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0), "ranks disagree"
    union = codec_ddp_steps.train_quantizer(0, 1, STEPS).state_dict()
    diffs = max_differences(union, rank0)
    print(f"max |2 processes - 1 process|: {max(diffs.values()):.1e}")
    assert max(diffs.values()) <= TOLERANCE
    # what the package did: each rank's codebooks learn from its own share (rank 0's is kept)
    share = codec_ddp_steps.train_quantizer(0, 2, STEPS).state_dict()
    assert max(max_differences(union, share).values()) > 100 * TOLERANCE


def train(tmp_path: Path, world: int, steps: int, mode: str) -> list[dict]:
    """The state dict of each rank after ``steps`` of tests/fixtures/codec_ddp_steps.py."""
    out = tmp_path / f"{mode}{world}"
    cmd = [sys.executable, "-m", "tests.fixtures.codec_ddp_steps", str(out), str(world)]
    result = subprocess.run(
        [*cmd, str(steps), mode], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(path, weights_only=True) for path in sorted(out.glob("rank*.pt"))]


def assert_close(single: dict, rank0: dict, rank1: dict) -> None:
    """Ranks hold the same codebooks; both codebooks and parameters within TOLERANCE of 1 process."""
    assert all(torch.equal(rank0[n], rank1[n]) for n in rank0 if is_buffer(n)), "ranks disagree"
    diffs = max_differences(single, rank0)
    for kind, select in (("codebooks", is_buffer), ("parameters", lambda n: not is_buffer(n))):
        worst = max((n for n in diffs if select(n)), key=diffs.get)
        print(f"{kind}: max |2 processes - 1 process| = {diffs[worst]:.1e} ({worst})")
        assert diffs[worst] <= TOLERANCE
    counts = [name for name in single if name.endswith("cluster_size")]
    assert all(torch.equal(single[n], rank0[n]) for n in counts), "counts are exact sums"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_codec_on_two_processes_matches_one_process_on_the_union_batch(tmp_path: Path) -> None:
    """The codec under DistributedDataParallel, L1 + commitment: codebooks and parameters after
    6 steps."""
    (single,) = train(tmp_path, 1, STEPS, "codec")
    assert_close(single, *train(tmp_path, 2, STEPS, "codec"))


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["balanced", "balanced-whole"])
def test_balanced_codec_step_on_two_processes_matches_one_process(
    mode: str, tmp_path: Path
) -> None:
    """The solver's generator loss (mel and L1 through the balancer, commitment outside it): one
    step, with per-item gradient norms and with whole-batch ones. (Later steps drift apart by up to 4e-4: the log-mel loss of a near-silent untrained
    output amplifies rounding differences into its gradient, whatever the number of processes.)"""
    (single,) = train(tmp_path, 1, 1, mode)
    assert_close(single, *train(tmp_path, 2, 1, mode))


def test_feature_matching_on_halves_with_union_scales_gives_the_union_gradient() -> None:
    """Relative feature matching is divided by ``mean|D(x)|``: DDP's mean of the halves'
    gradients is the union batch's when both halves divide by the union's scales (the solver
    averages them over ranks) and not when each divides by its own."""
    torch.manual_seed(0)
    real = [[torch.randn(4, 2, 5, 3) * (i + 1) for i in range(3)] for _ in range(2)]
    real[0][0][2:] *= 10  # the halves' feature sizes differ
    fake = [[(r + torch.randn_like(r)).requires_grad_() for r in maps] for maps in real]
    leaves = [f for maps in fake for f in maps]
    union = torch.autograd.grad(feature_matching_loss(real, fake), leaves)
    half = [
        [[t[i : i + 2] for t in maps] for maps in pair] for pair in (real, fake) for i in (0, 2)
    ]
    real_halves, fake_halves = half[:2], half[2:]
    scales = [(a + b) / 2 for a, b in zip(*map(feature_scales, real_halves), strict=True)]
    for own in (False, True):
        grads = [
            torch.autograd.grad(feature_matching_loss(r, f, scales=None if own else scales), leaves)
            for r, f in zip(real_halves, fake_halves, strict=True)
        ]
        ddp = [(a + b) / 2 for a, b in zip(*grads, strict=True)]
        worst = max((d - u).abs().max().item() for d, u in zip(ddp, union, strict=True))
        assert (worst > 1e-3) if own else (worst < 1e-7), worst


def test_codebook_draws_depend_on_the_step_not_on_the_global_rng() -> None:
    """The solver seeds the codec's training forward (k-means initialisation, dead-code refills)
    from the run's seed and the generator step, and restores the global RNG after it."""
    audio = fixed_batch()["audio"]
    codebooks = []
    for seed in (1, 2):  # Lightning's DDP set-up re-seeds the global RNG, one process does not
        torch.manual_seed(0)
        solver = small_solver()
        torch.manual_seed(seed)
        with solver._step_rng():
            solver.model(audio, 4)
        codebooks.append(solver.model.quantizer.state_dict())
        after = torch.rand(3)
        torch.manual_seed(seed)
        assert torch.equal(after, torch.rand(3)), "the global RNG is restored"
    assert all(torch.equal(codebooks[0][n], codebooks[1][n]) for n in codebooks[0])
