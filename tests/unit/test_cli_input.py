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


GARBAGE_FILES = {
    "binary.yaml": b"\x00\xff\xfe garbage \x01",
    "notyaml.yaml": b"a: [unclosed\n  - : :\n",
    "list.yaml": b"- 1\n- 2\n",
    "empty.yaml": b"",
}

# Every verb fed garbage: an unknown option, a missing or bad argument, unreadable or
# nonsensical files. `{f}` is replaced by each garbage file in turn where it appears.
GARBAGE = [
    ["bogus-verb"],
    ["up"],
    ["up", "no-such-mode"],
    ["up", "flannel-vxlan", "--bogus"],
    ["up", "flannel-vxlan", "--datapath", "warp"],
    ["up", "flannel-vxlan", "--proxy-mode", "magic"],
    ["up", "flannel-vxlan", "-t", "{f}"],
    ["up", "flannel-vxlan", "-t", "/nonexistent/topo.yaml"],
    ["up", "flannel-vxlan", "-n", "Bad_Name!"],
    ["up", "flannel-vxlan", "-n", "x" * 40],
    ["down", "-n", "../etc"],
    ["status", "-o", "xml"],
    ["exec"],
    ["exec", "-n", "nolab", "node1"],
    ["capture", "-n", "nolab", "node1", "--duration", "-3"],
    ["verify", "--pcap", "{f}", "--mode", "flannel-vxlan"],
    ["verify", "--pcap", "/nonexistent.pcap", "--mode", "flannel-vxlan"],
    ["probe", "-n", "nolab", "--protocol", "sctp-ish"],
    ["apply"],
    ["apply", "-n", "nolab", "-f", "{f}"],
    ["apply", "-n", "nolab", "-f", "/nonexistent.yaml"],
    ["delete", "-n", "nolab", "-f", "{f}"],
    ["get", "widgets"],
    ["label", "-n", "nolab"],
    ["scale", "-n", "nolab", "deployment", "x", "--replicas", "-1"],
    ["bench", "--bogus"],
    ["graph", "-t", "{f}"],
    ["graph", "-o", "gif"],
    ["trace", "-n", "nolab"],
    ["trace", "-n", "nolab", "a/b", "c/d", "--port", "99999"],
    ["exercise", "start", "no-such-exercise"],
    ["exercise", "explode"],
]


def _cases() -> list[list[str]]:
    cases = []
    for argv in GARBAGE:
        if "{f}" in argv:
            cases += [[a.replace("{f}", name) for a in argv] for name in GARBAGE_FILES]
        else:
            cases.append(argv)
    return cases


@pytest.mark.parametrize("argv", _cases(), ids=" ".join)
def test_every_verb_answers_garbage_with_one_line(tmp_path: Path, argv: list[str]) -> None:
    """One `error:` line, a documented exit code (2 bad input, 3 the machine lacks something,
    e.g. root), never a traceback; nothing else on stderr."""
    for name, data in GARBAGE_FILES.items():
        (tmp_path / name).write_bytes(data)
    argv = [str(tmp_path / a) if a in GARBAGE_FILES else a for a in argv]
    result = CliRunner().invoke(main, argv, env={"LABCTL_STATE_DIR": str(tmp_path / "state")})
    assert result.exit_code in (2, 3), (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_an_unexpected_exception_is_one_line_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug still ends in one line (exit 1) that says it is one; LABCTL_DEBUG shows it."""
    import labctl.cli.lab

    def boom(*_: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(labctl.cli.lab, "emit_json", boom)
    # The integration suite sets LABCTL_DEBUG for its own runs; this test needs it unset.
    monkeypatch.delenv("LABCTL_DEBUG", raising=False)
    result = CliRunner().invoke(main, ["modes", "-o", "json"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: internal error: ZeroDivisionError: boom")
    debug = CliRunner().invoke(main, ["modes", "-o", "json"], env={"LABCTL_DEBUG": "1"})
    assert isinstance(debug.exception, ZeroDivisionError)
