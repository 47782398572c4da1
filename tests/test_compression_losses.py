"""Losses of the EnCodec recipe: balancer proportions, discriminator shapes, adversarial and spectral terms."""

from __future__ import annotations

import pytest
import torch

from musicgen.losses import (
    Balancer,
    MultiScaleMelLoss,
    discriminator_hinge_loss,
    feature_matching_loss,
    generator_hinge_loss,
    ms_stft_discriminator,
    si_snr,
)
from musicgen.metrics.audio_quality import MelDistance


def toy_problem() -> tuple[torch.nn.Linear, torch.Tensor, dict]:
    """A linear 'decoder' and two losses of very different scales on its output."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 10)
    output = layer(torch.randn(3, 6))
    losses = {"big": 1000 * output.pow(2).sum(), "small": 0.01 * output.abs().mean()}
    return layer, output, losses


def test_balancer_matches_a_direct_computation() -> None:
    weights = {"big": 3.0, "small": 1.0}
    layer, output, losses = toy_problem()
    grads = {
        name: torch.autograd.grad(loss, output, retain_graph=True)[0]
        for name, loss in losses.items()
    }
    norms = {
        name: g.flatten(1).norm(dim=1).mean() for name, g in grads.items()
    }  # per item, then batch mean
    expected = sum(weights[n] / 4 * grads[n] / norms[n] for n in grads)
    (expected_weight_grad,) = torch.autograd.grad(output, layer.weight, expected, retain_graph=True)

    balancer = Balancer(weights, total_norm=1.0, ema_decay=0.999, per_item=True)
    surrogate, logged = balancer(losses, output)
    surrogate.backward()
    assert torch.allclose(layer.weight.grad, expected_weight_grad, rtol=1e-5)
    assert {n: v.item() for n, v in logged.items()} == pytest.approx(
        {n: v.item() for n, v in norms.items()}
    )


def test_balancer_gives_the_requested_gradient_proportions() -> None:
    _, output, losses = toy_problem()
    balancer = Balancer({"big": 3.0, "small": 1.0}, per_item=False)
    surrogate, _ = balancer(losses, output)
    (total,) = torch.autograd.grad(surrogate, output, retain_graph=True)
    parts = {}
    for name in losses:  # each loss alone through the same (now updated) balancer statistics
        grad = torch.autograd.grad(losses[name], output, retain_graph=True)[0]
        parts[name] = grad / grad.norm() * balancer.weights[name] / 4
    assert torch.allclose(total, parts["big"] + parts["small"], atol=1e-6)
    assert parts["big"].norm().item() == pytest.approx(0.75) and parts[
        "small"
    ].norm().item() == pytest.approx(0.25)


def test_balancer_moving_average_and_subsets() -> None:
    balancer = Balancer({"a": 1.0, "b": 1.0}, ema_decay=0.5, per_item=False)
    y = torch.ones(4, requires_grad=True)
    balancer({"a": (2 * y).sum(), "b": y.sum()}, y)
    balancer({"a": (4 * y).sum()}, y)  # only "a" moves
    averages = balancer.norm_sums / balancer.norm_count
    assert averages.tolist() == pytest.approx([(0.5 * 4 + 8) / 1.5, 2.0])
    surrogate, _ = balancer({"a": (4 * y).sum()}, y)
    (grad,) = torch.autograd.grad(surrogate, y)
    assert grad.norm().item() == pytest.approx(8 / ((0.25 * 4 + 0.5 * 8 + 8) / 1.75), rel=1e-5)
    with pytest.raises(ValueError, match="balancer weights losses"):
        balancer({"c": y.sum()}, y)


def test_ms_stft_discriminator_shapes() -> None:
    disc = ms_stft_discriminator(channels=1, filters=4)
    assert [d.n_fft for d in disc.discriminators] == [1024, 2048, 512, 256, 128]
    assert [d.hop_length for d in disc.discriminators] == [256, 512, 128, 64, 32]
    logits, fmaps = disc(torch.randn(2, 1, 8000))
    assert len(logits) == len(fmaps) == 5
    for d, logit, maps in zip(disc.discriminators, logits, fmaps, strict=True):
        frames = (8000 - d.n_fft) // d.hop_length + 1
        assert logit.shape[:3] == (2, 1, frames)
        assert len(maps) == 5 and all(m.shape[:2] == (2, 4) for m in maps)
    stereo_logits, _ = ms_stft_discriminator(channels=2, filters=4)(torch.randn(1, 2, 4096))
    assert all(logit.shape[:2] == (1, 1) for logit in stereo_logits)


def test_adversarial_losses() -> None:
    zeros = [torch.zeros(2, 1, 3, 3)] * 5
    assert discriminator_hinge_loss(zeros, zeros).item() == pytest.approx(2.0)
    assert discriminator_hinge_loss([z + 1 for z in zeros], [z - 1 for z in zeros]).item() == 0.0
    assert generator_hinge_loss([z + 2 for z in zeros]).item() == 0.0
    assert generator_hinge_loss(zeros).item() == pytest.approx(1.0)
    maps = [[torch.randn(2, 4, 5, 6) for _ in range(3)] for _ in range(2)]
    assert feature_matching_loss(maps, maps).item() == 0.0
    doubled = [[2 * m for m in scale] for scale in maps]
    assert feature_matching_loss(maps, doubled).item() == pytest.approx(
        1.0
    )  # relative: |2m - m| / mean|m|


def test_si_snr_and_mel_distance() -> None:
    torch.manual_seed(0)
    ref = torch.randn(3, 1, 16000)
    assert (si_snr(0.5 * ref, ref) > 60).all()  # scale invariant
    noise = torch.randn(3, 1, 16000)
    noise = (
        noise - (noise * ref).sum(-1, keepdim=True) / ref.pow(2).sum(-1, keepdim=True) * ref
    )  # orthogonal
    noise = noise * ref.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)
    assert si_snr(ref + noise, ref).tolist() == pytest.approx([0.0] * 3, abs=1e-3)
    distance = MelDistance(16000)
    assert distance(ref, ref).tolist() == [0.0] * 3
    assert (distance(ref + 0.3 * noise, ref) > 0).all()
    loss = MultiScaleMelLoss(16000)
    assert loss(ref, ref).item() == 0.0 and loss(ref + 0.3 * noise, ref).item() > 0
