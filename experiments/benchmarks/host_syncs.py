"""Host syncs per training step and per eval forward of every adaptive strategy and the adaptive iUNet (issue 19).

A host sync (``.item()``, ``bool(t)``, ``nonzero``, a blocking copy, ...; see
``equinet.sync_counter``) stalls a CUDA stream. Counted with ``count_host_syncs``; on a CPU the
branches a CUDA device takes are forced (``emulate_cuda=True``), so the count is the one a GPU
would see. Natural images (scikit-image's bundled photographs, no ties), random-init and
"trained" (a short Adam run on a denoising task in this process). Per network: the bare network
(train step = forward, MSE, backward, Adam; eval forward under ``no_grad``) and one full Lightning
training step of ``ReconstructionModule`` (a step that is not a logging step). Also how often the
exact tie path runs: per adaptive level, the samples whose fast margin test failed (those are
re-run through the exact rule; each costs one more forward). Target: <= 1 sync everywhere.

    python experiments/benchmarks/host_syncs.py [--check] [--device cuda] [--only APS-3 ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from equinet.models import UNet  # noqa: E402
from equinet.models.iunet import LiftediUNet  # noqa: E402
from equinet.sampling.adaptive import record_undecided  # noqa: E402
from equinet.sync_counter import count_host_syncs  # noqa: E402

IMAGES = ("camera", "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "coins", "moon")

# name -> builder(channels, depth)
NETWORKS: Dict[str, Callable[[int, int], torch.nn.Module]] = {
    **{name: (lambda c, d, j=j: UNet(1, 1, channels=c, depth=d, sampling="aps", sampling_kwargs={"filter_size": j},
                                     padding_mode="circular"))
       for name, j in (("APS", 1), ("APS-3", 3), ("APS-5", 5))},
    "LPS": lambda c, d: UNet(1, 1, channels=c, depth=d, sampling="lps", padding_mode="circular"),
    "orthogonal-adaptive": lambda c, d: UNet(1, 1, channels=c, depth=d, sampling="orthogonal",
                                             sampling_kwargs={"adaptive": True}, padding_mode="circular"),
    "iUNet-adaptive": lambda c, d: LiftediUNet(1, 1, channels=c, depth=d, adaptive_resampling=True,
                                               padding_mode="circular", verbose=0),
}


def natural_batch(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """``(batch, 1, size, size)`` float32 crops of the bundled natural images, each normalised."""
    from equinet.data.synthetic import natural_image

    g = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(batch):
        image = torch.from_numpy(natural_image(IMAGES[i % len(IMAGES)]))
        if min(image.shape) < size:  # (not with the bundled images at the default sizes)
            image = torch.nn.functional.interpolate(image[None, None], size=(max(size, image.shape[0]),
                                                    max(size, image.shape[1])), mode="bilinear")[0, 0]
        top = int(torch.randint(0, image.shape[0] - size + 1, (1,), generator=g))
        left = int(torch.randint(0, image.shape[1] - size + 1, (1,), generator=g))
        crop = image[top:top + size, left:left + size]
        crops.append((crop - crop.mean()) / crop.std().clamp_min(1e-6))
    return torch.stack(crops)[:, None].float()


def noisy(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x + 0.2 * torch.randn(x.shape, generator=g).to(x.device)


def flagged(records: List[List[torch.Tensor]]) -> str:
    """Per adaptive level, samples whose fast test failed / samples (first pass of each forward)."""
    if not records or not records[0]:
        return "-"
    levels = records[0]
    return " ".join(f"{int(f.sum())}/{f.numel()}" for f in levels)


def count(fn: Callable[[], object]) -> Tuple[int, str, str]:
    """(host syncs, where, exact-path flags) of one call of ``fn``."""
    with record_undecided() as records:
        with count_host_syncs(emulate_cuda=True) as tally:
            fn()
    where = "; ".join(f"{w.rsplit('/', 1)[-1]} x{n}" for w, n in tally.where.most_common(3))
    return tally.total, where, flagged(records)


def train_step_fn(net, opt, x, y):
    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
    return step


def lightning_step_syncs(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Tuple[int, str]:
    """Host syncs of one full Lightning training step (the second; log_every_n_steps is larger)."""
    import pytorch_lightning as pl

    from equinet.data.types import ReconSample
    from equinet.lightning import ReconstructionModule

    class Counter(pl.Callback):
        def __init__(self):
            self.result: Optional[Tuple[int, str]] = None
            self._ctx = None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 1:
                self._ctx = count_host_syncs(emulate_cuda=True)
                self._tally = self._ctx.__enter__()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if self._ctx is not None:
                self._ctx.__exit__(None, None, None)
                self._ctx = None
                t = self._tally
                self.result = (t.total, "; ".join(f"{w.rsplit('/', 1)[-1]} x{n}" for w, n in t.where.most_common(3)))

    B = x.shape[0]
    samples = [ReconSample(x[i].cpu(), y[i].cpu(), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(8.0),
                           f"img{i}", torch.tensor(i)) for i in range(B)]
    loader = torch.utils.data.DataLoader(samples + samples, batch_size=B)  # two steps
    module = ReconstructionModule(network=net)
    counter = Counter()
    accelerator = "gpu" if device.type == "cuda" else device.type
    trainer = pl.Trainer(accelerator=accelerator, devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=50,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[counter])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader)
    assert counter.result is not None, "the Lightning step was not counted"
    return counter.result


def measure(name: str, args, device: torch.device, x: torch.Tensor, y: torch.Tensor,
            many: torch.Tensor) -> List[dict]:
    torch.manual_seed(0)
    net = NETWORKS[name](args.channels, args.depth).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(2)
    rows = []
    for state in ("init", "trained"):
        steps = 0
        if state == "trained":
            net.train()
            for steps in range(1, args.train_steps + 1):
                train_step_fn(net, opt, noisy(y, g), y)()
        net.train()
        train_step_fn(net, opt, x, y)()  # warm (lazy state, Adam's moments)
        train, train_where, train_flags = count(train_step_fn(net, opt, x, y))
        net.eval()
        with torch.no_grad():
            ev, ev_where, _ = count(lambda: net(x))
            with record_undecided() as records:  # how often the exact path runs, on more crops
                net(many)
            ev_flags = flagged(records)
        net.train()
        light, light_where = (lightning_step_syncs(net, x, y, device) if args.lightning else (None, ""))
        rows.append(dict(name=name, state=state if state == "init" else f"trained ({steps} steps)", train=train,
                         eval=ev, lightning=light, train_flags=train_flags, eval_flags=ev_flags,
                         where="; ".join(w for w in (train_where, ev_where, light_where) if w)))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(NETWORKS), help="networks to count (default: all)")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--flag-batch", type=int, default=16,
                        help="natural crops of the eval forward that reports the exact-path counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-steps", type=int, default=5, help="Adam steps (denoising) of the 'trained' rows")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--limit", type=int, default=1, help="most host syncs allowed per step/forward")
    parser.add_argument("--no-lightning", dest="lightning", action="store_false",
                        help="skip the full Lightning training step")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--check", action="store_true", help="exit 1 if some count exceeds --limit")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    y = natural_batch(args.batch, args.size).to(device)
    x = noisy(y, torch.Generator().manual_seed(1))
    many = natural_batch(args.flag_batch, args.size, seed=3).to(device)
    rows = []
    for name in args.only or list(NETWORKS):
        rows += measure(name, args, device, x, y, many)
    emul = "CUDA branches forced on the CPU" if device.type == "cpu" else device.type
    print(f"host syncs, {args.batch}x1x{args.size}x{args.size} natural images, channels {args.channels}, "
          f"depth {args.depth}, device {device} ({emul})")
    print(f"exact path: per adaptive level, samples whose fast test failed / samples (eval forward of "
          f"{args.flag_batch} crops; the counted train step)\n")
    print("| network | weights | syncs per train step | per eval forward | per Lightning train step "
          "| exact path, eval | exact path, train |")
    print("|---|---|---:|---:|---:|---|---|")
    missed = []
    for r in rows:
        light = "-" if r["lightning"] is None else r["lightning"]
        print(f"| {r['name']} | {r['state']} | {r['train']} | {r['eval']} | {light} | {r['eval_flags']} "
              f"| {r['train_flags']} |")
        counts = [r["train"], r["eval"]] + ([r["lightning"]] if r["lightning"] is not None else [])
        if max(counts) > args.limit:
            missed.append(f"{r['name']} ({r['state']}): {counts} at {r['where']}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if missed:
        print(f"\nover the limit of {args.limit} host sync(s):\n  " + "\n  ".join(missed))
    elif args.check:
        print(f"all within {args.limit} host sync(s)")
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
