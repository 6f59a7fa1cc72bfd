"""Host syncs of the adaptive strategies (issue 19): at most one per training step and per eval forward
on natural inputs, counted with the CUDA branches forced on the CPU; the redo of a forward whose
fast test failed is the inline rule bit for bit; the coupling's sub-batch size per device."""

import copy
import types

import pytest
import torch

from equinet.data.synthetic import natural_image
from equinet.models import UNet
from equinet.models import invertible
from equinet.models.iunet import LiftediUNet
from equinet.sampling.adaptive import decide_once, record_undecided
from equinet.sync_counter import count_host_syncs, takes_cpu_branch

NETWORKS = {
    "APS": lambda: UNet(1, 1, channels=4, depth=3, sampling="aps", sampling_kwargs={"filter_size": 1},
                        padding_mode="circular"),
    "APS-3": lambda: UNet(1, 1, channels=4, depth=3, sampling="aps", sampling_kwargs={"filter_size": 3},
                          padding_mode="circular"),
    "APS-5": lambda: UNet(1, 1, channels=4, depth=3, sampling="aps", sampling_kwargs={"filter_size": 5},
                          padding_mode="circular"),
    "LPS": lambda: UNet(1, 1, channels=4, depth=3, sampling="lps", padding_mode="circular"),
    "orthogonal-adaptive": lambda: UNet(1, 1, channels=4, depth=3, sampling="orthogonal",
                                        sampling_kwargs={"adaptive": True}, padding_mode="circular"),
    "iUNet-adaptive": lambda: LiftediUNet(1, 1, channels=4, depth=3, adaptive_resampling=True,
                                          padding_mode="circular", verbose=0),
}


def natural_batch(batch=3, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for name in ("camera", "astronaut", "coffee", "chelsea")[:batch]:
        image = torch.from_numpy(natural_image(name)).float()
        top = int(torch.randint(0, image.shape[0] - size, (1,), generator=g))
        left = int(torch.randint(0, image.shape[1] - size, (1,), generator=g))
        crop = image[top:top + size, left:left + size]
        out.append((crop - crop.mean()) / crop.std())
    return torch.stack(out)[:, None]


def train_step(net, opt, x, y):
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(net(x), y).backward()
    opt.step()


def syncs(fn):
    with count_host_syncs(emulate_cuda=True) as tally:
        fn()
    return tally


def test_counter_counts_known_syncs():
    """The counter is not vacuous: a bool(), an .item(), a nonzero and a tolist each count once in
    emulation; a CPU op outside emulation counts nothing; the CPU branch is off while emulating."""
    x = torch.randn(5)
    assert syncs(lambda: bool(x.sum() > 0)).total == 1
    assert syncs(lambda: x.max().item()).total == 1
    assert syncs(lambda: (x > 0).nonzero()).total == 1
    assert syncs(lambda: x.tolist()).total == 1
    assert syncs(lambda: x[x > 0]).total == 1
    assert syncs(lambda: (x * 2).exp().sum(dim=0)).total == 0
    with count_host_syncs() as plain:
        bool(x.sum() > 0)
    assert plain.total == 0
    assert takes_cpu_branch(x)
    with count_host_syncs(emulate_cuda=True):
        assert not takes_cpu_branch(x)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_at_most_one_host_sync_per_step_and_forward(name):
    """<= 1 host sync per training step (forward, loss, backward, Adam) and per eval forward, at
    initialisation and after a few training steps, and no sample went down the exact path."""
    torch.manual_seed(0)
    net = NETWORKS[name]()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    y = natural_batch()
    x = y + 0.1 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    for trained in (False, True):
        if trained:
            for _ in range(3):
                train_step(net, opt, x, y)
        net.train()
        with record_undecided() as train_flags:
            train = syncs(lambda: train_step(net, opt, x, y))
        net.eval()
        with record_undecided() as eval_flags, torch.no_grad():
            ev = syncs(lambda: net(x))
        assert train.total <= 1, (name, trained, train.summary())
        assert ev.total <= 1, (name, trained, ev.summary())
        # every adaptive level recorded its flags (the eval forward is adaptive for every network)
        # and the one sync is that check, nothing else
        assert eval_flags and eval_flags[0] and ev.total == 1, (name, eval_flags)
        undecided = [int(f.sum()) for record in eval_flags + train_flags for f in record]
        assert sum(undecided) == 0, (name, trained, undecided)


def test_ties_still_take_the_exact_path_and_it_costs_syncs():
    """On a constant image every level ties: the forward's single check sees it and the redo runs
    the exact rule (which syncs): the limit above is about natural inputs, and the count is real."""
    torch.manual_seed(0)
    net = NETWORKS["APS-3"]().eval()
    with record_undecided() as flags, torch.no_grad():
        tally = syncs(lambda: net(torch.ones(2, 1, 32, 32)))
    assert tally.total > 1
    assert all(bool(f.all()) for f in flags[0])


@pytest.mark.parametrize("name", ["APS-3", "orthogonal-adaptive", "iUNet-adaptive"])
def test_redo_is_the_inline_rule_bit_for_bit(name):
    """A training forward with some undecided sample (a constant image in the batch) gives the bits
    and the batch-norm running statistics of the rule applied inline, level by level (no deferral)."""
    torch.manual_seed(0)
    net = NETWORKS[name]().train()
    x = torch.cat([natural_batch(batch=1, size=32), torch.full((1, 1, 32, 32), 0.5)])
    inline = copy.deepcopy(net)
    with record_undecided() as flags:
        out = net(x)
    assert any(bool(f[1]) for f in flags[0]) and not any(bool(f[0]) for f in flags[0])  # the redo ran
    if isinstance(inline, UNet):
        ref = inline._forward(x)  # no decide_once: every level applies the rule inline
    else:
        import equinet.sampling.adaptive as adaptive

        adaptive._LOCAL.pending = adaptive._Pending(exact=True)
        try:
            ref = inline(x)
        finally:
            adaptive._LOCAL.pending = None
    assert torch.equal(out, ref)
    for a, b in zip(net.buffers(), inline.buffers()):
        assert torch.equal(a, b)


def test_decide_once_nested_and_without_levels():
    """Nested calls join the outer one; a run with no adaptive level does no sync at all."""
    with count_host_syncs(emulate_cuda=True) as tally:
        out = decide_once(lambda: decide_once(lambda: torch.ones(2) * 2))
    assert tally.total == 0 and torch.equal(out, torch.full((2,), 2.0))
    with record_undecided() as flags:
        decide_once(lambda: decide_once(lambda: torch.ones(1)))
    assert flags == [[]]  # one outermost call recorded, no level


def test_sub_batch_elements_per_device(monkeypatch):
    """CPU: the cache-sized SUB_BATCH_ELEMENTS; CUDA: 1/1024 of the card's memory in float32
    elements, clamped to [2^20, 2^26]; other accelerators 2^22."""
    assert invertible.sub_batch_elements(torch.device("cpu")) == invertible.SUB_BATCH_ELEMENTS
    assert invertible.sub_batch_elements(torch.device("mps")) == 1 << 22
    for memory, expected in ((80 << 30, (80 << 30) // 4096), (1 << 30, 1 << 20), (1 << 40, 1 << 26)):
        invertible._cuda_sub_batch_elements.cache_clear()
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda index, m=memory: types.SimpleNamespace(total_memory=m))
        assert invertible.sub_batch_elements(torch.device("cuda", 0)) == expected
    invertible._cuda_sub_batch_elements.cache_clear()


def test_coupling_sub_batches_follow_the_device_size(monkeypatch):
    coupling = invertible.AdditiveCoupling(torch.nn.Conv2d(2, 2, 3, padding=1), split=2)
    x = torch.randn(8, 4, 8, 8)
    assert coupling._sub_batches(x) == [slice(None)]
    monkeypatch.setattr(invertible, "sub_batch_elements", lambda device: 2 * x[:1].numel())
    assert len(coupling._sub_batches(x)) == 4


def _redo_flag_worker(rank, world, init_file, results):
    import torch.distributed as dist

    from equinet.sampling.adaptive import _any_across_ranks

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        bn = torch.nn.SyncBatchNorm(2).train()
        flag = torch.tensor(rank == 1)  # only rank 1 saw an undecided sample
        results[rank] = (bool(_any_across_ranks(flag, [bn])), bool(_any_across_ranks(torch.tensor(False), [bn])),
                         bool(_any_across_ranks(flag, [bn.eval()])))
    finally:
        dist.destroy_process_group()


def test_redo_decision_is_collective_under_sync_batchnorm(tmp_path):
    """A training SyncBatchNorm's forward is a collective: if one rank redoes the forward, all do
    (else the ranks' collectives would no longer match and DDP would hang)."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_redo_flag_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    assert dict(results) == {0: (True, False, False), 1: (True, False, True)}
