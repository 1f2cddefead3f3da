"""Unit tests for the exercise schema, the answer file and the pcap reader: no lab needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from labctl.exercises import engine
from labctl.exercises.model import (
    EXERCISES_ROOT,
    ExerciseError,
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
    assert len(exercises) >= 4
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
            "x.yaml: solution[0]: give exactly one of exec, apply, capture, answer",
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
            "x.yaml: checks[0].answer.equals: give exactly one of value, exec, pcap_http_body",
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
