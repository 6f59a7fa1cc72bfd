"""The ``equinet`` command.

``equinet fit|validate|test|predict ...`` is a LightningCLI (``equinet.lightning.cli``);
``equinet study ...`` compares sampling strategies trained under one budget (the paper's tables);
``equinet data ...`` creates/inspects datasets; ``equinet equivariance`` prints the
shift-equivariance comparison of randomly initialised U-Nets for every strategy.
"""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

from equinet.errors import one_line_errors

# subcommand -> "module:function"; each function takes the remaining argv.
SUBCOMMANDS = {
    "data": "equinet.data.cli:main",
    "equivariance": "equinet.study:equivariance_main",
    "study": "equinet.study:study_main",
}
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

USAGE = """usage: equinet <command> [options]

commands:
  fit | validate | test | predict   train/evaluate with the Lightning CLI (see `equinet fit --help`)
  study                             train every sampling strategy under one budget: tables + figures
  data                              create synthetic datasets in the real file formats (`equinet data --help`)
  equivariance                      shift-equivariance table of random U-Nets for every strategy

examples:
  equinet study --config experiments/study/demo.yaml
  equinet fit --config experiments/configs/synthetic/aps.yaml
  equinet fit --config experiments/configs/fastmri/aps.yaml --data.root /data/knee --ckpt_path last
  equinet test --config experiments/configs/fastmri/aps.yaml --data.root /data/knee --ckpt_path last
  equinet fit --config experiments/configs/fastmri/aps.yaml --print_config

A mistake (unknown option, missing dataset root, ...) ends with a one-line error saying what to
do; EQUINET_DEBUG=1 shows the full traceback instead.
"""


def _resolve(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS and command not in LIGHTNING_SUBCOMMANDS:
        sys.stderr.write(f"equinet: unknown command {command!r}\n\n{USAGE}")
        raise SystemExit(2)
    with one_line_errors(f"equinet {command}"):
        if command in SUBCOMMANDS:
            _resolve(SUBCOMMANDS[command])(rest)
        else:
            _resolve("equinet.lightning.cli:lightning_main")(argv)


if __name__ == "__main__":  # pragma: no cover
    main()
