"""Unit tests for the exercise schema, the answer file and the pcap reader: no lab needed."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from labctl.exercises import engine
from labctl.exercises.model import (
    EXERCISES_ROOT,
    Exec,
    ExerciseError,
    Expect,
    catalogue,
    find,
    load,
    parse,
)

GOOD = {
    "name": "demo",
    "title": "a demo",
    "mode": "flannel-vxlan",
    "minutes": 5,
    "hints": ["look"],
    "solution": [{"exec": {"target": "node1", "argv": ["true"]}}],
    "checks": [
        {
            "says": "node1 answers",
            "exec": {"target": "node1", "argv": ["true"]},
            "expect": {"exit_code": 0},
        }
    ],
}


def _doc(**changes: object) -> str:
    return yaml.safe_dump(GOOD | changes)


def test_every_shipped_exercise_loads_and_has_a_lesson() -> None:
    exercises = catalogue()
    assert len(exercises) >= 10
    for name, ex in exercises.items():
        assert (EXERCISES_ROOT / name / "README.md").read_text().startswith("# ")
        assert ex.lab.startswith("ex-") and len(ex.lab) <= 24
        # A check must be able to fail before the student acts: none is a constant.
        for c in ex.checks:
            assert not (c.answer and c.answer.equals.value is not None), (name, c.says)


def test_a_good_document_loads() -> None:
    ex = parse(_doc(), "x.yaml")
    assert ex.topology == "default" and ex.lab == "ex-demo"


def test_long_names_give_a_valid_lab_name() -> None:
    ex = parse(_doc(name="a-very-long-exercise-name-indeed"), "x.yaml")
    assert ex.lab == "ex-a-very-long-exercise"
    assert parse(_doc(short="vx"), "x.yaml").lab == "ex-vx"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"mode": "weave"}, "x.yaml: mode: unknown mode 'weave'"),
        ({"minutes": 0}, "x.yaml: minutes: "),
        ({"name": "Bad_Name"}, "x.yaml: name: use lowercase"),
        ({"hints": []}, "x.yaml: hints: "),
        ({"short": "x" * 22}, "x.yaml: short: "),
        (
            {"solution": [{"capture": {"target": "n", "write": "../etc/x.pcap"}}]},
            "x.yaml: solution[0].capture.write: '../etc/x.pcap': give a plain file name",
        ),
        ({"colour": "red"}, "x.yaml: colour: Extra inputs are not permitted"),
        (
            {"solution": [{"exec": {"target": "n", "argv": ["x"]}, "apply": "kind: Pod"}]},
            "x.yaml: solution[0]: give exactly one of exec, apply, delete, capture, answer, wait",
        ),
        ({"solution": [{"exec": {"target": "n", "argv": []}}]}, "x.yaml: solution[0].exec.argv"),
        (
            {"checks": [{"says": "s", "exec": {"target": "n", "argv": ["x"]}}]},
            "x.yaml: checks[0]: exec and expect go together",
        ),
        (
            {"checks": [{"says": "s", "exec": {"target": "n", "argv": ["x"]}, "expect": {}}]},
            "x.yaml: checks[0].expect: give at least one of",
        ),
        (
            {"checks": [{"says": "s", "probe": {"src": "a/b", "dst": "a/c", "port": 70000}}]},
            "x.yaml: checks[0].probe.port",
        ),
        (
            {"checks": [{"says": "s", "answer": {"key": "k", "equals": {}}}]},
            "x.yaml: checks[0].answer.equals: give exactly one of value, exec, "
            "pcap_http_body, capture",
        ),
        (
            {"checks": [{"says": "s", "answer": {"key": "k", "equals": {"value": "1", "add": 1}}}]},
            "x.yaml: checks[0].answer.equals: json, pattern and add only apply to exec",
        ),
        (
            {
                "checks": [
                    {
                        "says": "s",
                        "answer": {
                            "key": "k",
                            "equals": {"exec": {"target": "n", "argv": ["x"]}, "pattern": "("},
                        },
                    }
                ]
            },
            "x.yaml: checks[0].answer.equals: pattern: ",
        ),
        ({"checks": [{"says": "s"}]}, "x.yaml: checks[0]: give exactly one of exec"),
        (
            {"solution": [{"answer": {"key": "k", "capture": {"target": "n", "write": "c"}}}]},
            "x.yaml: solution[0].answer: capture and field go together",
        ),
        (
            {"solution": [{"answer": {"key": "k", "value": "1", "field": "ip.src"}}]},
            "x.yaml: solution[0].answer: capture and field go together",
        ),
        (
            {
                "solution": [
                    {
                        "answer": {
                            "key": "k",
                            "capture": {"target": "n", "write": "c"},
                            "field": "ip.ttl",
                        }
                    }
                ]
            },
            "x.yaml: solution[0].answer.field: Input should be 'ip.src', 'ip.dst' or 'wire'",
        ),
        (
            {"cleanup": [{"wait": {"exec": {"target": "n", "argv": ["x"]}, "timeout": 5}}]},
            "x.yaml: cleanup[0].wait.expect: Field required",
        ),
        (
            {
                "cleanup": [
                    {
                        "wait": {
                            "exec": {"target": "n", "argv": ["x"]},
                            "expect": {"exit_code": 0},
                            "timeout": 600,
                        }
                    }
                ]
            },
            "x.yaml: cleanup[0].wait.timeout: ",
        ),
        (
            {"setup": [{"delete": "kind: Pod", "apply": "kind: Pod"}]},
            "x.yaml: setup[0]: give exactly one of exec, apply, delete, capture, answer, wait",
        ),
        (
            {
                "checks": [
                    {
                        "says": "s",
                        "exec": {"target": "n", "argv": ["x"]},
                        "expect": {"stdout_matches": "("},
                    }
                ]
            },
            "x.yaml: checks[0].expect: stdout_matches: ",
        ),
    ],
)
def test_bad_documents_fail_in_one_line_naming_the_field(
    changes: dict[str, object], error: str
) -> None:
    with pytest.raises(ExerciseError) as e:
        parse(_doc(**changes), "x.yaml")
    assert str(e.value).startswith(error), str(e.value)
    assert "\n" not in str(e.value)


def test_not_yaml_and_not_a_mapping() -> None:
    with pytest.raises(ExerciseError, match=r"^x.yaml: not YAML"):
        parse("a: [", "x.yaml")
    with pytest.raises(ExerciseError, match="expected a mapping"):
        parse("- 1", "x.yaml")


def test_the_name_must_match_the_directory(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "exercise.yaml").write_text(_doc())
    with pytest.raises(ExerciseError, match="name: 'demo' differs from its directory"):
        load(tmp_path / "other")


def test_unknown_exercise_lists_the_known_ones() -> None:
    with pytest.raises(ExerciseError, match=r"no exercise 'nope'; known: .*mtu-overhead"):
        find("nope")


def test_answers_file_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    ex = parse(_doc(), "x.yaml")
    assert engine.read_answers(ex) == {}
    engine.write_answer(ex, "kind", "vxlan")
    engine.write_answer(ex, "vni", "1")
    assert engine.read_answers(ex, {"vni": "2"}) == {"kind": "vxlan", "vni": "2"}
    engine.answers_path(ex).write_text("- not a mapping")
    with pytest.raises(ExerciseError, match="expected 'key: answer' lines"):
        engine.read_answers(ex)


def _vxlan(inner: bytes) -> Ether:
    header = b"\x08\x00\x00\x00\x00\x00\x01\x00"  # flags I, VNI 1
    return (
        Ether()
        / IP(src="10.0.0.33", dst="10.0.0.32")
        / UDP(sport=40000, dport=8472)
        / Raw(header + inner)
    )


def test_http_body_is_read_from_inside_vxlan(tmp_path: Path) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n"
    body = b"default/web-2\nclient 10.244.0.2\n"
    inner = Ether() / IP(src="10.244.1.2", dst="10.244.0.2") / TCP(sport=80, dport=5000)
    request = Ether() / IP(src="10.244.0.2", dst="10.244.1.2") / TCP(sport=5000, dport=80)
    path = tmp_path / "c.pcap"
    wrpcap(
        str(path),
        [
            _vxlan(bytes(request / Raw(b"GET / HTTP/1.1\r\n\r\n"))),
            _vxlan(bytes(inner / Raw(head))),
            _vxlan(bytes(inner / Raw(body))),
        ],
    )
    assert engine.http_body_in_pcap(path) == "default/web-2"
    wrpcap(str(path), [_vxlan(bytes(request / Raw(b"GET / HTTP/1.1\r\n\r\n")))])
    with pytest.raises(ExerciseError, match="no HTTP response inside VXLAN packets"):
        engine.http_body_in_pcap(path)


def test_first_packet_field_reads_addresses_and_the_wire(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    bare = Ether() / IP(src="10.244.0.2", dst="10.244.1.2") / TCP(sport=80, dport=5000)
    wrpcap(str(path), [bare])
    assert engine.first_packet_field(path, "ip.src") == "10.244.0.2"
    assert engine.first_packet_field(path, "ip.dst") == "10.244.1.2"
    assert engine.first_packet_field(path, "wire") == "bare"
    wrpcap(str(path), [_vxlan(bytes(Ether() / bare)), bare])
    assert engine.first_packet_field(path, "wire") == "vxlan"
    wrpcap(str(path), [Ether() / IP(dst="10.0.0.32") / UDP(dport=8285) / Raw(bytes(bare[IP]))])
    assert engine.first_packet_field(path, "wire") == "udp"
    wrpcap(str(path), [Ether() / IP(dst="10.0.0.32", proto=4) / Raw(bytes(bare[IP]))])
    assert engine.first_packet_field(path, "wire") == "ipip"
    wrpcap(str(path), [Ether(type=0x0806) / Raw(b"x" * 28)])
    with pytest.raises(ExerciseError, match=r"c\.pcap: the capture caught no IP packet"):
        engine.first_packet_field(path, "wire")


class _FakeLab(engine._Lab):
    """A lab without namespaces: fixed refs, and `run` answers from a list of outputs."""

    def __init__(self, outputs: list[str]) -> None:
        self.name = "exh-fake"
        self.refs = {("ip", "node2"): "10.0.0.33"}
        self.outputs = outputs
        self.calls = 0

    def run(self, e: Exec, check: bool = False) -> subprocess.CompletedProcess[str]:
        self.calls += 1
        out = self.outputs[min(self.calls, len(self.outputs)) - 1]
        return subprocess.CompletedProcess(e.argv, 0, out, "")


def test_expect_expands_refs_and_lacks_can_fail() -> None:
    e = Exec(target="node1", argv=["ip", "route"])
    live = _FakeLab(["10.244.2.0/26 via 10.0.0.33 dev eth0 proto bgp"])
    assert live.meets(e, Expect(stdout_contains="via {ip:node2}")) == (True, "ok")
    ok, why = live.meets(e, Expect(stdout_lacks="via {ip:node2}"))
    assert not ok and why == "output shows 'via 10.0.0.33'"
    with pytest.raises(ExerciseError, match=r"\{ip:node9\}: lab exh-fake has no such object"):
        live.meets(e, Expect(stdout_lacks="via {ip:node9}"))


def test_wait_polls_until_the_condition_holds_or_times_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine, "WAIT_EVERY", 0.01)
    e = Exec(target="node1", argv=["vtysh"])
    live = _FakeLab(['"bgpState":"Established"', '"bgpState":"Established"', '"bgpState":"Active"'])
    engine._wait(live, e, Expect(stdout_lacks="Established"), timeout=5)
    assert live.calls == 3
    stuck = _FakeLab(['"bgpState":"Established"'])
    with pytest.raises(ExerciseError, match=r"^node1: vtysh: after 0.05s: output shows"):
        engine._wait(stuck, e, Expect(stdout_lacks="Established"), timeout=0.05)


def test_start_on_a_lab_in_another_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    ex = find("bgp-hold-timer")
    monkeypatch.setattr(engine.state, "list_labs", lambda: ["exh-x"])
    monkeypatch.setattr(
        engine.state,
        "load",
        lambda lab: SimpleNamespace(mode="flannel-vxlan", topology_name="default"),
    )
    assert engine._same_lab(ex, "exh-other") is False
    with pytest.raises(
        ExerciseError, match="lab exh-x runs flannel-vxlan on default, not calico-bgp"
    ):
        engine._same_lab(ex, "exh-x")
    monkeypatch.setattr(
        engine.state,
        "load",
        lambda lab: SimpleNamespace(mode="calico-bgp", topology_name="default"),
    )
    assert engine._same_lab(ex, "exh-x") is True


def test_exercises_that_add_objects_remove_them() -> None:
    # Labs are shared by exercises of the same mode and topology: what one adds, it removes.
    for name, ex in catalogue().items():
        if ex.setup or any(s.apply is not None for s in ex.solution):
            assert any(s.delete is not None for s in ex.cleanup), name
