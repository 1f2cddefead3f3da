"""Bad command-line input gets one line naming the option and the fix, exit 2 (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from labctl.cli import main


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "cannot read capture"),
        (["--pod-cidr", "nonsense"], "--pod-cidr 'nonsense': not a CIDR"),
        (["--pod-cidr", "fd00::/64"], "give an IPv4 CIDR"),
    ],
)
def test_verify_pcap_bad_input(tmp_path: Path, extra: list[str], message: str) -> None:
    bogus = tmp_path / "x.pcap"
    bogus.write_text("not a capture\n")
    result = CliRunner().invoke(
        main, ["verify", "--pcap", str(bogus), "--mode", "flannel-vxlan", *extra]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
