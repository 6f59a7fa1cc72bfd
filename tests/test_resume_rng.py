"""ResumableRNG keeps every rank's own RNG states: gathered into one checkpoint under DDP, each rank
restores its own (its CUDA generator included), rank 0's stay at the top level for old checkpoints."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import torch
import torch.multiprocessing as mp

from equinet.lightning import ResumableRNG


def _callback(rank: int, world_size: int) -> ResumableRNG:
    cb = ResumableRNG()
    cb.setup(SimpleNamespace(global_rank=rank, world_size=world_size), None, "fit")
    return cb


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_each_rank_restores_its_own_states_cuda_included(monkeypatch, tmp_path):
    # a fake 2-rank checkpoint: rank r's CPU states after seeding with 100 + r, and a CUDA state per rank
    per_rank, expected = {}, {}
    for rank in (0, 1):
        _seed_all(100 + rank)
        state = ResumableRNG._local_state()
        state["cuda"] = [torch.full((16,), rank + 1, dtype=torch.uint8)]
        per_rank[rank] = state
        expected[rank] = _draws()
    ckpt = dict(per_rank[0], per_rank=per_rank)
    torch.save(ckpt, tmp_path / "rng.pt")  # survives a weights_only load, integer rank keys included
    ckpt = torch.load(tmp_path / "rng.pt", weights_only=True)

    restored_cuda = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored_cuda.append(states))
    for rank in (1, 0):
        _seed_all(999)
        _callback(rank, 2).load_state_dict(ckpt)
        assert _draws() == expected[rank], rank
        assert torch.equal(restored_cuda[-1][0], per_rank[rank]["cuda"][0]), rank
    assert expected[0] != expected[1]

    # an old checkpoint (rank 0's states only, no per_rank) and a rank the checkpoint lacks get rank 0's
    old = {k: v for k, v in ckpt.items() if k != "per_rank"}
    for cb, state in ((_callback(1, 2), old), (_callback(3, 4), ckpt)):
        _seed_all(999)
        cb.load_state_dict(state)
        assert _draws() == expected[0]


def test_single_process_state_round_trips():
    cb = _callback(0, 1)
    _seed_all(5)
    state = cb.state_dict()
    assert set(state["per_rank"]) == {0} and torch.equal(state["per_rank"][0]["torch"], state["torch"])
    want = _draws()
    _seed_all(6)
    cb.load_state_dict(state)
    assert _draws() == want


def _gather_worker(rank: int, world_size: int, store: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        _seed_all(200 + rank)
        state = _callback(rank, world_size).state_dict()
        if rank == 0:
            torch.save(state, out)
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_checkpoint_gathers_every_ranks_states(tmp_path):
    out = tmp_path / "state.pt"
    mp.start_processes(_gather_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, start_method="fork")
    state = torch.load(out, weights_only=True)
    assert set(state["per_rank"]) == {0, 1}
    for rank in (0, 1):
        _seed_all(200 + rank)
        assert torch.equal(state["per_rank"][rank]["torch"], torch.get_rng_state()), rank
    assert torch.equal(state["torch"], state["per_rank"][0]["torch"])
    assert not torch.equal(state["per_rank"][0]["torch"], state["per_rank"][1]["torch"])
