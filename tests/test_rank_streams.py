"""Training-step random draws differ across ranks and after a resume, and a fresh one-process
run keeps the stream ``seed_everything`` started (solvers/rank_streams.py)."""

from types import SimpleNamespace

import lightning as L
import torch

from solvers.rank_streams import RankStreams, stream_seed


def draws_at_train_start(world_size: int, rank: int, step: int) -> torch.Tensor:
    L.seed_everything(42, verbose=False)
    torch.rand(3)  # the model's initialisation, the same on every rank
    trainer = SimpleNamespace(world_size=world_size, global_rank=rank, global_step=step)
    RankStreams(42).on_train_start(trainer, None)
    return torch.rand(4)


def test_ranks_draw_different_numbers_and_runs_repeat():
    rank0, rank1 = draws_at_train_start(2, 0, 0), draws_at_train_start(2, 1, 0)
    assert not torch.equal(rank0, rank1)
    assert torch.equal(rank1, draws_at_train_start(2, 1, 0))


def test_a_resume_does_not_replay_the_first_steps():
    assert not torch.equal(draws_at_train_start(1, 0, 0), draws_at_train_start(1, 0, 500))
    assert torch.equal(draws_at_train_start(1, 0, 500), draws_at_train_start(1, 0, 500))


def test_a_fresh_one_process_run_keeps_its_stream():
    L.seed_everything(42, verbose=False)
    torch.rand(3)
    untouched = torch.rand(4)
    assert torch.equal(draws_at_train_start(1, 0, 0), untouched)


def test_stream_seeds_are_distinct_and_in_range():
    seeds = {stream_seed(42, rank, step) for rank in range(8) for step in (0, 1, 1000)}
    assert len(seeds) == 24
    assert all(0 <= s < 2**63 for s in seeds)
