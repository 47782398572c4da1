"""MusicGen LM: loss masking, causality, KV cache, CFG, sampling, training and checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import musicgen.lm.loss as lm_loss
from musicgen.lm import KVCache, LMConfig, MusicLM, sample_next, sample_top_k, sample_top_p

CARD = 16


def tiny(**overrides) -> MusicLM:
    torch.manual_seed(0)
    values = dict(n_q=4, card=CARD, dim=32, num_heads=4, num_layers=2, ffn_dim=64) | overrides
    return MusicLM(LMConfig(**values)).double().eval()


def conditions(batch: int = 2, length: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    prefix = torch.randn(batch, length, 32, generator=generator, dtype=torch.float64)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 1] = False
    mask[1, :] = False
    return prefix, mask


def reference_loss(model: MusicLM, codes, prefix=None, prefix_mask=None, valid=None):
    """CE from the public forward, with the loss mask built position by position."""
    delays = model.pattern.delays
    batch, n_q, frames = codes.shape
    steps = frames + max(delays) + 1
    seq = torch.full((batch, n_q, steps), CARD, dtype=torch.long)
    keep = torch.zeros(batch, n_q, steps, dtype=torch.bool)
    for k, delay in enumerate(delays):
        for t in range(frames):
            seq[:, k, t + 1 + delay] = codes[:, k, t]
            keep[:, k, t + 1 + delay] = True if valid is None else valid[:, t]
    logits = model(seq[:, :, :-1], prefix, prefix_mask)
    target = seq[:, :, 1:].clamp(max=CARD - 1)  # the special token only at masked positions
    ce = F.cross_entropy(logits.permute(0, 3, 1, 2), target, reduction="none")
    keep = keep[:, :, 1:]
    per_codebook = (ce * keep).sum((0, 2)) / keep.sum((0, 2))
    return (ce * keep).sum() / keep.sum(), per_codebook


@pytest.mark.parametrize("delays", [None, [0, 2, 2, 5]])
def test_compute_loss_matches_reference_and_its_gradient(delays, monkeypatch):
    monkeypatch.setattr(lm_loss, "CHUNK_LOGITS", 300)  # several chunks of tokens
    model = tiny(delays=delays, bias=True)
    codes = torch.randint(0, CARD, (2, 4, 9))
    prefix, prefix_mask = conditions()
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 6:] = False
    out = model.compute_loss(codes, prefix, prefix_mask, valid)
    expected, per_codebook = reference_loss(model, codes, prefix, prefix_mask, valid)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.ce_per_codebook, per_codebook.detach())
    torch.testing.assert_close(out.ppl_per_codebook, per_codebook.detach().exp())
    grads = torch.autograd.grad(3.0 * out.loss, list(model.parameters()))
    expected_grads = torch.autograd.grad(3.0 * expected, list(model.parameters()))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_valid_frames_leave_out_exactly_the_padded_items():
    model = tiny()
    codes = torch.randint(0, CARD, (2, 4, 8))
    valid = torch.tensor([[True] * 8, [False] * 8])
    both = model.compute_loss(codes, valid=valid)
    alone = model.compute_loss(codes[:1])
    torch.testing.assert_close(both.loss, alone.loss)
    torch.testing.assert_close(both.ce_per_codebook, alone.ce_per_codebook)


def test_causal_and_masked_prefix_positions_are_ignored():
    model = tiny()
    prefix, prefix_mask = conditions()
    seq = torch.randint(0, CARD + 1, (2, 4, 10))
    logits = model(seq, prefix, prefix_mask)
    changed = seq.clone()
    changed[:, :, 6:] = (changed[:, :, 6:] + 1) % (CARD + 1)
    torch.testing.assert_close(model(changed, prefix, prefix_mask)[:, :, :6], logits[:, :, :6])
    assert not torch.allclose(model(changed, prefix, prefix_mask)[:, :, 6:], logits[:, :, 6:])
    other = prefix.clone()
    other[~prefix_mask] = 5.0  # only masked entries change
    torch.testing.assert_close(model(seq, other, prefix_mask), logits)
    other[0, 0] += torch.randn(32, dtype=torch.float64)  # a visible entry changes everything
    assert not torch.allclose(model(seq, other, prefix_mask)[0], logits[0])


def test_forward_with_kv_cache_in_chunks_matches_full_forward():
    model = tiny()
    prefix, prefix_mask = conditions()
    seq = torch.randint(0, CARD + 1, (2, 4, 12))
    full = model(seq, prefix, prefix_mask)
    cache = KVCache(prefix.shape[1] + seq.shape[2])
    parts = [model(seq[:, :, :5], prefix, prefix_mask, cache)]
    parts += [model(seq[:, :, s : s + 1], cache=cache) for s in range(5, 9)]
    parts.append(model(seq[:, :, 9:], cache=cache))
    torch.testing.assert_close(torch.cat(parts, dim=2), full)


GENERATION_CASES = {
    "plain": {},
    "prefix": {"cond": True},
    "cfg": {"cond": True, "null": True, "cfg_coef": 3.0},
    "prompt": {"cond": True, "prompt": 5},
    "cfg+prompt": {"cond": True, "null": True, "cfg_coef": 2.0, "prompt": 3},
}


def generation_kwargs(case: dict) -> dict:
    kwargs = {"num_frames": 14, "batch_size": 2, "cfg_coef": case.get("cfg_coef", 3.0)}
    if case.get("cond"):
        kwargs["prefix"], kwargs["prefix_mask"] = conditions()
    if case.get("null"):
        kwargs["null_prefix"] = torch.zeros_like(kwargs["prefix"])
        kwargs["null_prefix_mask"] = torch.zeros_like(kwargs["prefix_mask"])
    if case.get("prompt"):
        kwargs["prompt"] = torch.randint(0, CARD, (2, 4, case["prompt"]))
    return kwargs


@pytest.mark.parametrize("name", list(GENERATION_CASES))
def test_kv_cache_gives_the_same_tokens(name: str):
    model = tiny()
    kwargs = generation_kwargs(GENERATION_CASES[name])
    greedy = model.generate(**kwargs, temperature=0.0)
    assert torch.equal(model.generate(**kwargs, temperature=0.0, use_cache=False), greedy)
    assert greedy.shape == (2, 4, 14) and greedy.min() >= 0 and greedy.max() < CARD
    if "prompt" in kwargs:
        assert torch.equal(greedy[:, :, : kwargs["prompt"].shape[2]], kwargs["prompt"])
    sampled = [
        model.generate(
            **kwargs, top_k=5, use_cache=cache, generator=torch.Generator().manual_seed(3)
        )
        for cache in (True, False)
    ]
    assert torch.equal(sampled[0], sampled[1])


def manual_greedy(model: MusicLM, prefix, prefix_mask, null, null_mask, coef, frames):
    """Greedy CFG decoding with separate full forwards for the two conditions."""
    pattern, special = model.pattern, model.special
    steps = pattern.num_steps(frames)
    seq = torch.full((prefix.shape[0], 4, steps), special, dtype=torch.long)
    valid = pattern.step_mask(frames)
    for step in range(1, steps):
        cond = model(seq[:, :, :step], prefix, prefix_mask)[:, :, -1]
        uncond = model(seq[:, :, :step], null, null_mask)[:, :, -1]
        tokens = (uncond + coef * (cond - uncond)).argmax(-1)
        seq[:, :, step] = torch.where(valid[:, step], tokens, special)
    return pattern.revert(seq, special)[0]


def test_cfg_batches_conditional_and_null_rows():
    model = tiny()
    prefix, prefix_mask = conditions()
    null, null_mask = torch.zeros_like(prefix), torch.zeros_like(prefix_mask)
    ours = model.generate(prefix, prefix_mask, null, null_mask, num_frames=10, temperature=0.0)
    expected = manual_greedy(model, prefix, prefix_mask, null, null_mask, 3.0, 10)
    assert torch.equal(ours, expected)


def test_cfg_coefficient_one_is_conditional_sampling():
    model = tiny()
    prefix, prefix_mask = conditions()
    null, null_mask = torch.randn_like(prefix), torch.zeros_like(prefix_mask)

    def run(*args, **kwargs):
        seeded = torch.Generator().manual_seed(7)
        return model.generate(*args, num_frames=12, top_k=6, generator=seeded, **kwargs)

    conditional = run(prefix, prefix_mask)
    assert torch.equal(run(prefix, prefix_mask, null, null_mask, cfg_coef=1.0), conditional)
    assert not torch.equal(run(prefix, prefix_mask, null, null_mask, cfg_coef=3.0), conditional)


def test_top_k_one_is_greedy():
    model = tiny()
    prefix, prefix_mask = conditions()
    greedy = model.generate(prefix, prefix_mask, num_frames=12, temperature=0.0)
    assert torch.equal(model.generate(prefix, prefix_mask, num_frames=12, top_k=1), greedy)


def test_top_p_draws_only_from_the_nucleus():
    probs = torch.tensor([0.05, 0.4, 0.02, 0.3, 0.13, 0.1])
    logits = probs.log().expand(4000, -1)
    generator = torch.Generator().manual_seed(0)
    drawn = sample_top_p(logits, 0.75, generator)
    order = probs.argsort(descending=True)
    size = int((probs[order].cumsum(0) < 0.75).sum()) + 1  # smallest set reaching p
    nucleus = set(order[:size].tolist())
    assert nucleus == {1, 3, 4}
    assert set(drawn.tolist()) == nucleus
    frequency = torch.bincount(drawn, minlength=6)[[1, 3, 4]].double() / len(drawn)
    torch.testing.assert_close(
        frequency, torch.tensor([0.4, 0.3, 0.13]).double() / 0.83, atol=0.03, rtol=0
    )
    assert torch.equal(
        sample_next(logits[:5], top_p=0.3, top_k=1, generator=generator),
        torch.ones(5, dtype=torch.long),
    )


def test_top_k_draws_only_from_the_k_best():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    best = logits.topk(4, dim=-1).indices
    draws = torch.stack([sample_top_k(logits, 4) for _ in range(200)], dim=-1)
    for row in range(3):
        assert set(draws[row].tolist()) == set(best[row].tolist())
    assert torch.equal(sample_next(logits, temperature=0.0), logits.argmax(-1))


def test_adamw_steps_reduce_cross_entropy():
    model = tiny().float().train()
    codes = torch.randint(0, CARD, (4, 4, 12), generator=torch.Generator().manual_seed(0))
    prefix = torch.randn(4, 2, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model.compute_loss(codes, prefix).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_config_and_state_dict_round_trip(tmp_path):
    model = tiny(delays=[0, 1, 1, 2], dropout=0.1, bias=True, norm_first=False).float()
    path = tmp_path / "lm.pt"
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    restored = MusicLM(LMConfig.from_dict(saved["config"])).eval()
    restored.load_state_dict(saved["state_dict"])
    seq = torch.randint(0, CARD + 1, (2, 4, 7))
    assert torch.equal(restored(seq), model.eval()(seq))
    assert restored.config == model.config
    with pytest.raises(ValueError, match="unknown LMConfig fields"):
        LMConfig.from_dict({"width": 3})


def test_dropout_is_active_only_in_training():
    model = tiny(dropout=0.5).train()
    seq = torch.randint(0, CARD + 1, (1, 4, 6))
    assert not torch.equal(model(seq), model(seq))
    model.eval()
    assert torch.equal(model(seq), model(seq))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 4, "prompt": torch.zeros(2, 4, 5, dtype=torch.long)}, "exceeds"),
        ({"num_frames": 4, "prompt": torch.zeros(2, 3, 2, dtype=torch.long)}, "prompt must be"),
        ({"num_frames": 4, "prompt": torch.full((2, 4, 2), CARD)}, "must lie in"),
        ({"num_frames": 4, "batch_size": 3}, "batch size"),
        (
            {"num_frames": 4, "null_prefix": torch.zeros(2, 5, 32, dtype=torch.float64)},
            "same shape",
        ),
    ],
)
def test_bad_generation_arguments(kwargs: dict, message: str):
    model = tiny()
    prefix, prefix_mask = conditions()
    with pytest.raises(ValueError, match=message):
        model.generate(prefix, prefix_mask, **kwargs)


def test_full_prompt_is_returned_as_is():
    model = tiny()
    prompt = torch.randint(0, CARD, (1, 4, 6))
    assert torch.equal(model.generate(num_frames=6, prompt=prompt), prompt)


def test_bf16_autocast_training_step_is_close_to_float32():
    model = tiny().float().train()
    codes = torch.randint(0, CARD, (2, 4, 10), generator=torch.Generator().manual_seed(0))
    reference = model.compute_loss(codes).loss
    expected = torch.autograd.grad(reference, list(model.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.compute_loss(codes).loss
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, reference, atol=0.05, rtol=0.02)
    for got, want in zip(grads, expected, strict=True):
        assert got.dtype == torch.float32
        assert (got - want).norm() <= 0.1 * want.norm() + 1e-6
