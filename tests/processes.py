"""Several processes in one test: a free TCP port, and one rank of a command run with the environment torchrun /
accelerate set (tests/test_train_multiprocess.py, tests/test_synth_multiprocess.py, the integration server)."""

from __future__ import annotations

import importlib
import os
import socket
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, env: dict, entry: str, argv: list[str], log: str) -> None:
    """Process target: ``entry``'s ``main(argv)`` (e.g. ``train.__main__``, ``surgsora.cli``) as rank ``rank``, one
    torch thread, its stdout and stderr in ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
    import torch

    torch.set_num_threads(1)
    sys.exit(importlib.import_module(entry).main(argv))
