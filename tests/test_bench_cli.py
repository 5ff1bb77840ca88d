"""``htapkv bench``: one CLI. Every workload answers every shared flag
(``--pd``, ``--duration``, ``--ops``, ``--concurrency``, ``--seed``,
``--output``), with a meaning of its own or a clear "does not apply"."""

from __future__ import annotations

import pytest

SHARED = {
    "--pd": "127.0.0.1:1",
    "--duration": "5",
    "--ops": "10",
    "--concurrency": "4",
    "--seed": "3",
    "--output": "out",
}
# Where a shared flag has no meaning, the workload says why (exit status 2).
DOES_NOT_APPLY = {("storage", "--pd"), ("raft", "--pd"), ("raft", "--ops"), ("tpch", "--duration")}


@pytest.mark.parametrize("workload", ["storage", "raft", "ycsb", "columnar", "tpch", "htap"])
def test_every_workload_answers_every_shared_flag(
    workload: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvstore.cli import build_parser

    parser = build_parser()
    for flag, value in SHARED.items():
        argv = ["bench", workload, flag, value]
        if (workload, flag) in DOES_NOT_APPLY:
            with pytest.raises(SystemExit) as e:
                parser.parse_args(argv)
            assert e.value.code == 2
            assert f"{flag} does not apply to this workload: " in capsys.readouterr().err
        else:
            args = parser.parse_args(argv)  # known, with a value of its own
            assert args.func is not None, (workload, flag)
