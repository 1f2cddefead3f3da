"""Running an exercise on a live lab: start (up + setup), check, hint, solve, reset.

Steps and checks act through the same code the verbs use (lifecycle, apiserver, nsenter into
a target's namespaces, labctl.probe), so what an exercise asks is what a student can do with
`labctl` by hand.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from labctl import lifecycle, state, store
from labctl.exercises.model import (
    AnswerSource,
    Capture,
    Check,
    Exec,
    Exercise,
    ExerciseError,
    Expect,
    Step,
)
from labctl.features import resolve_datapath
from labctl.modes import get_mode
from labctl.nsutil import nsenter_argv
from labctl.topology import load_topology, resolve_path

HINTS_FILE = "exercise-hints.json"
EXEC_TIMEOUT = 60.0
PROBE_TIMEOUT = 2.0
WAIT_EVERY = 0.5
_REF = re.compile(r"\{(ip|podcidr|pid|clusterip):([^}]+)\}")
#: UDP destination ports of the encapsulations the labs put on the wire.
_UDP_WIRE = {8472: "vxlan", 4789: "vxlan", 8285: "udp"}


def answers_path(ex: Exercise) -> Path:
    """The student's answer file for `ex`: ~/.labctl/answers/<name>.yaml."""
    return Path.home() / ".labctl" / "answers" / f"{ex.name}.yaml"


def read_answers(ex: Exercise, given: dict[str, str] | None = None) -> dict[str, str]:
    """The answer file's keys, overridden by `given` (the --answer flags)."""
    path = answers_path(ex)
    found: dict[str, str] = {}
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ExerciseError(f"{path}: not YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ExerciseError(f"{path}: expected 'key: answer' lines")
        found = {str(k): str(v) for k, v in data.items()}
    return found | (given or {})


def write_answer(ex: Exercise, key: str, value: str) -> None:
    """Set one key of the answer file, keeping the others."""
    answers = read_answers(ex)
    answers[key] = value
    path = answers_path(ex)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(answers, sort_keys=True))


@dataclass
class Outcome:
    """One check's result: `says` is the check's own sentence, `detail` what was seen."""

    says: str
    ok: bool
    detail: str


class _Lab:
    """Lookups into a running lab: target PIDs and the addresses steps may name: `{ip:NODE}`,
    `{ip:NS/POD}`, `{podcidr:NODE}`, `{clusterip:NS/SERVICE}` and `{pid:NODE:DAEMON}` (a
    daemon's process, as `labctl status -o json` lists it under processes)."""

    def __init__(self, lab: str) -> None:
        self.name = lab
        self.topo = load_topology(Path(state.load(lab).topology))
        self.reload()

    def reload(self) -> None:
        """Read state and objects again: after apply/delete, or a daemon's restart."""
        self.st = state.load(self.name)
        self.objects = store.load(self.name)
        self.refs: dict[tuple[str, str], str] = {}
        for n, node in self.topo.nodes.items():
            self.refs["ip", n] = str(node.ip)
        for n, cidr in self.topo.node_pod_cidrs.items():
            self.refs["podcidr", n] = str(cidr)
        for key, pod in self.objects.pods.items():
            self.refs["ip", key] = pod.ip
        for key, svc in self.objects.services.items():
            if svc.spec.clusterIP:
                self.refs["clusterip", key] = svc.spec.clusterIP
        for name, pid in self.st.processes.items():
            self.refs["pid", name] = str(pid)

    def expand(self, text: str) -> str:
        def one(m: re.Match[str]) -> str:
            try:
                return self.refs[m.group(1), m.group(2)]
            except KeyError:
                raise ExerciseError(f"{m.group(0)}: lab {self.name} has no such object") from None

        return _REF.sub(one, text)

    def run(self, e: Exec, check: bool = False) -> subprocess.CompletedProcess[str]:
        argv = nsenter_argv(self.st.pid_of(e.target), [self.expand(a) for a in e.argv])
        env = dict(os.environ, **{state.LAB_ENV: self.name})
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=EXEC_TIMEOUT, env=env
            )
        except subprocess.TimeoutExpired:
            raise ExerciseError(f"{e.target}: {' '.join(e.argv)}: timed out") from None
        if check and proc.returncode != 0:
            why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ExerciseError(f"{e.target}: {' '.join(e.argv)}: exit {proc.returncode}: {why[0]}")
        return proc

    def capture(self, c: Capture) -> Path:
        from labctl.capture import tcpdump_argv

        out = self.st.dir / c.write
        bpf = None if c.filter is None else self.expand(c.filter)
        argv = tcpdump_argv(self.st.pid_of(c.target), "eth0", str(out), bpf, snaplen=0)
        env = dict(os.environ, **{state.LAB_ENV: self.name})
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
        started = time.monotonic()
        try:
            time.sleep(0.5)  # tcpdump needs a moment before it sees packets
            for e in c.during:
                self.run(e, check=True)
            time.sleep(max(0.0, c.duration - (time.monotonic() - started)))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(5)
        return out

    def meets(self, e: Exec, x: Expect) -> tuple[bool, str]:
        """Run `e` once; whether its result shows what `x` asks, and what differed."""
        proc = self.run(e)
        out = proc.stdout
        has, lacks, matches = (
            None if t is None else self.expand(t)
            for t in (x.stdout_contains, x.stdout_lacks, x.stdout_matches)
        )
        wrong = []
        if x.exit_code is not None and proc.returncode != x.exit_code:
            wrong.append(f"exit {proc.returncode}, not {x.exit_code}")
        if has is not None and has not in out:
            wrong.append(f"output lacks {has!r}")
        if lacks is not None and lacks in out:
            wrong.append(f"output shows {lacks!r}")
        if matches is not None and not re.search(matches, out):
            wrong.append(f"output does not match {matches!r}")
        return not wrong, "; ".join(wrong) or "ok"

    def value(self, src: AnswerSource) -> str:
        if src.value is not None:
            return src.value
        if src.pcap_http_body is not None:
            return http_body_in_pcap(self.st.dir / src.pcap_http_body)
        if src.capture is not None and src.field is not None:
            return first_packet_field(self.capture(src.capture), src.field)
        assert src.exec is not None  # the model allows exactly one source
        text = self.run(src.exec, check=True).stdout
        if src.json_path is not None:
            try:
                text = str(_dig(json.loads(text), src.json_path))
            except json.JSONDecodeError:
                raise ExerciseError(f"{src.exec.target}: {src.exec.argv[0]}: not JSON") from None
        if src.pattern is not None:
            m = re.search(src.pattern, text)
            if not m:
                raise ExerciseError(f"{src.exec.target}: no match for {src.pattern!r}")
            text = m.group(1) if m.groups() else m.group(0)
        text = text.strip()
        if src.add is None:
            return text
        try:
            return str(int(text) + src.add)
        except ValueError:
            raise ExerciseError(f"{src.exec.target}: {text[:40]!r} is not a number") from None


def _dig(doc: Any, path: str) -> Any:
    for part in path.split("."):
        try:
            doc = doc[int(part)] if isinstance(doc, list) else doc[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ExerciseError(f"json path {path!r}: no {part!r}") from None
    return doc


def http_body_in_pcap(path: Path) -> str:
    """The first line of the HTTP response body carried inside the VXLAN packets of `path`.

    The inner frame is decoded by hand after the 8-byte VXLAN header, because scapy binds
    VXLAN to port 4789 and flannel uses 8472.
    """
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import rdpcap

    try:
        packets = rdpcap(str(path))
    except (OSError, EOFError) as e:
        raise ExerciseError(f"{path}: cannot read the capture: {e}") from None
    stream = b""
    for pkt in packets:
        if UDP not in pkt:
            continue
        inner = Ether(bytes(pkt[UDP].payload)[8:])
        if IP in inner and TCP in inner and inner[TCP].sport == 80:
            stream += bytes(inner[TCP].payload)
    _, sep, body = stream.decode(errors="replace").partition("\r\n\r\n")
    if not sep or not body.strip():
        raise ExerciseError(f"{path}: no HTTP response inside VXLAN packets")
    return body.strip().splitlines()[0]


def first_packet_field(path: Path, field: str) -> str:
    """`field` of the first IP packet in `path`: `ip.src`, `ip.dst`, or `wire`, how it crossed
    the wire (`vxlan`, `udp` (flannel's udp backend), `ipip` or `bare`)."""
    from scapy.layers.inet import IP, UDP
    from scapy.utils import rdpcap

    try:
        packets = [p for p in rdpcap(str(path)) if IP in p]
    except (OSError, EOFError) as e:
        raise ExerciseError(f"{path}: cannot read the capture: {e}") from None
    if not packets:
        raise ExerciseError(f"{path.name}: the capture caught no IP packet")
    ip = packets[0][IP]
    if field == "ip.src":
        return str(ip.src)
    if field == "ip.dst":
        return str(ip.dst)
    if ip.proto == 4:
        return "ipip"
    if UDP in ip and ip[UDP].dport in _UDP_WIRE:
        return _UDP_WIRE[ip[UDP].dport]
    return "bare"


def _same_lab(ex: Exercise, lab: str) -> bool:
    """Whether `lab` is up already in the exercise's mode and topology (then `start` only runs
    the setup: exercises on the same mode and topology share one lab)."""
    if lab not in state.list_labs():
        return False
    st = state.load(lab)
    want = load_topology(resolve_path(ex.topology)).name
    if st.mode != ex.mode or st.topology_name != want:
        raise ExerciseError(
            f"lab {lab} runs {st.mode} on {st.topology_name}, not {ex.mode} on {want}; "
            f"use another -n, or 'labctl exercise reset {ex.name} -n {lab}'"
        )
    return True


def start(ex: Exercise, lab: str, progress: Callable[[str], None]) -> None:
    """`labctl up` with the exercise's mode and topology, then its setup steps. On a lab that
    already runs that mode and topology, only the setup steps."""
    path = resolve_path(ex.topology)
    state.check_lab_name(lab)
    lifecycle.check_environment()
    if _same_lab(ex, lab):
        run_steps(ex, lab, ex.setup)
        return
    mode = get_mode(ex.mode)
    # As `labctl up --datapath auto`: IPIP modes fall back to userspace where the kernel lacks ipip.
    datapath, why = resolve_datapath(mode.kernel_feature, "auto")
    notes = [why] if why else []
    lifecycle.up(lab, mode, path, load_topology(path), progress, datapath, notes)
    run_steps(ex, lab, ex.setup)


def run_steps(ex: Exercise, lab: str, steps: list[Step]) -> None:
    """Run setup or solution steps in order; ExerciseError at the first that fails."""
    from labctl import apiserver
    from labctl.k8s.manifests import parse_objects, read_documents

    live = _Lab(lab)
    for step in steps:
        if step.exec is not None:
            live.run(step.exec, check=True)
        elif step.apply is not None:
            apiserver.apply(lab, parse_objects(read_documents("-", io.StringIO(step.apply))))
            live.reload()
        elif step.delete is not None:
            objs = parse_objects(read_documents("-", io.StringIO(step.delete)))
            apiserver.delete(lab, objs, ignore_not_found=True)
            live.reload()
        elif step.capture is not None:
            live.capture(step.capture)
        elif step.answer is not None:
            write_answer(ex, step.answer.key, live.value(step.answer))
        elif step.wait is not None:
            _wait(live, step.wait.exec, step.wait.expect, step.wait.timeout)


def _wait(live: _Lab, e: Exec, x: Expect, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ok, why = live.meets(e, x)
        if ok:
            return
        if time.monotonic() >= deadline:
            raise ExerciseError(f"{e.target}: {' '.join(e.argv)}: after {timeout:g}s: {why}")
        time.sleep(WAIT_EVERY)


def check(ex: Exercise, lab: str, given: dict[str, str] | None = None) -> list[Outcome]:
    """Evaluate every check against the live lab and the student's answers."""
    live = _Lab(lab)
    answers = read_answers(ex, given)
    return [_one(live, c, answers, answers_path(ex)) for c in ex.checks]


def _one(live: _Lab, c: Check, answers: dict[str, str], where: Path) -> Outcome:
    try:
        ok, detail = _evaluate(live, c, answers, where)
    except ExerciseError as e:
        ok, detail = False, str(e)
    return Outcome(c.says, ok, detail)


def _evaluate(live: _Lab, c: Check, answers: dict[str, str], where: Path) -> tuple[bool, str]:
    if c.exec is not None and c.expect is not None:
        return live.meets(c.exec, c.expect)
    if c.file_contains is not None:
        path = Path(c.file_contains.path).expanduser()
        try:
            found = c.file_contains.text in path.read_text(errors="replace")
        except OSError as e:
            return False, f"{path}: {e.strerror}"
        return found, "ok" if found else f"{path} lacks {c.file_contains.text!r}"
    if c.probe is not None:
        return _probe(
            live, c.probe.src, c.probe.dst, c.probe.protocol, c.probe.port, c.probe.expect
        )
    assert c.answer is not None  # the model allows exactly one kind
    key = c.answer.key
    if key not in answers:
        return False, f"no answer {key!r} yet (--answer {key}=... or in {where})"
    want = live.value(c.answer.equals)
    got = answers[key]
    if got.strip().lower() == want.strip().lower():
        return True, "ok"
    return False, f"answer {key}={got!r} does not match the lab"


def _probe(
    live: _Lab, src: str, dst: str, protocol: str, port: int | None, expect: bool
) -> tuple[bool, str]:
    from labctl.probe import default_port, http_get, udp_ask

    pods = live.objects.pods
    for p in (src, dst):
        if p not in pods:
            raise ExerciseError(f"probe: no pod {p!r} in lab {live.name}")
    d = pods[dst]
    port = port or default_port(d, protocol)
    ask = http_get if protocol == "tcp" else udp_ask
    try:
        text = ask(live.st.pid_of(src), d.ip, port, PROBE_TIMEOUT)
        answer = text.strip().split("\n", 1)[0]
        worked, seen = answer == dst, f"answered by {answer!r}"
    except OSError as e:
        worked, seen = False, str(e) or type(e).__name__
    arrow = f"{src} -> {dst} {protocol}/{port}"
    if worked == expect:
        return True, "ok"
    return False, f"{arrow}: {seen}" + ("" if expect else " (should be blocked)")


def hint(ex: Exercise, lab: str) -> tuple[int, str]:
    """The next hint (1-based number, text); the count is kept in the lab's state directory,
    so a reset starts over. After the last hint, the last one again."""
    path = state.lab_dir(state.load(lab).lab) / HINTS_FILE
    shown: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
    n = min(shown.get(ex.name, 0) + 1, len(ex.hints))
    shown[ex.name] = n
    path.write_text(json.dumps(shown))
    return n, ex.hints[n - 1]


def solve(ex: Exercise, lab: str) -> None:
    """Run the reference solution on the lab."""
    state.load(lab)  # a clear error when the lab is not up
    run_steps(ex, lab, ex.solution)


def clean(ex: Exercise, lab: str) -> None:
    """Run the exercise's cleanup steps: the lab is again as `up` left it, for the next
    exercise on the same mode and topology."""
    state.load(lab)
    run_steps(ex, lab, ex.cleanup)


def reset(ex: Exercise, lab: str, progress: Callable[[str], None]) -> None:
    """Remove the lab (if up) and start the exercise again; the answer file is kept."""
    lifecycle.check_environment()
    if lab in state.list_labs() or lab in lifecycle.stale_netns():
        lifecycle.down(lab)
    start(ex, lab, progress)
