"""The learning benchmarks: ``g1 bench sft`` (does the cold start teach the tiny model to read boards?) and
``g1 bench grpo`` (does RL take G1 past its teacher?), on a CPU. Their shared settings: :mod:`.settings`."""

from __future__ import annotations


def register_cli(subparsers) -> None:
    """Add ``bench`` (with ``sft`` and ``grpo``) to the ``g1`` command's subparsers."""
    from . import grpo, sft

    bench = subparsers.add_parser("bench", help="learning benchmarks (sft, grpo)")
    commands = bench.add_subparsers(dest="bench_command", required=True)
    sft.register_cli(commands)
    grpo.register_cli(commands)
