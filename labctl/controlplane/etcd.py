"""The lab's etcd: a real etcd 3.4 (Debian etcd-server) run by the supervisor in the lab's
namespace, and a small v3 client over its JSON gateway.

Where it listens: 127.0.0.1:2379 in the lab namespace (for `labctl exec etcd -- etcdctl`), and
a Unix socket in the lab's state directory for the node agents. A socket file is reachable from
every node namespace without giving the nodes a management interface that real flannel
clusters would have but the lab's wire checks would then have to ignore.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLIENT_PORT = 2379
PEER_PORT = 2380
SOCKET_NAME = "localhost:2379"  # etcd names a unix:// listener's file after its host:port
READY_TIMEOUT = 30.0
MAX_RESTARTS = 5


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _prefix_end(prefix: str) -> str:
    """etcd's range end for "every key starting with prefix"."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


class EtcdError(RuntimeError):
    """etcd did not answer, or refused a request."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


@dataclass
class KeyValue:
    key: str
    value: str
    lease: int
    mod_revision: int


@dataclass
class Event:
    """One watch event: "PUT" (created, changed or renewed) or "DELETE" (deleted or its etcd
    lease expired)."""

    type: str
    key: str
    value: str


class Client:
    """etcd v3 over the gRPC JSON gateway on a Unix socket (stdlib only)."""

    def __init__(self, sock: str, timeout: float = 2.0) -> None:
        self.sock = sock
        self.timeout = timeout

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        conn = _UnixConnection(self.sock, self.timeout)
        try:
            conn.request("POST", f"/v3/{path}", json.dumps(body))
            resp = conn.getresponse()
            data = resp.read()
        except OSError as e:
            raise EtcdError(f"etcd at {self.sock}: {e}") from None
        finally:
            conn.close()
        out: dict[str, Any] = json.loads(data or b"{}")
        if resp.status != 200 or "error" in out:
            raise EtcdError(f"etcd {path}: {out.get('error') or out.get('message') or resp.status}")
        return out

    def get_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """The store's revision and every key under `prefix`."""
        out = self._call("kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return int(out["header"]["revision"]), [_kv(x) for x in out.get("kvs", [])]

    def get(self, key: str) -> KeyValue | None:
        """One key, or None."""
        kvs = self._call("kv/range", {"key": _b64(key)}).get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    def put(self, key: str, value: str, lease: int = 0) -> None:
        """Set `key`, attached to etcd lease `lease` (0: no lease, a flannel reservation)."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        self._call("kv/put", body)

    def create(self, key: str, value: str, lease: int = 0) -> bool:
        """Put only if `key` does not exist (flannel's createSubnet transaction)."""
        out = self._call(
            "kv/txn",
            {
                "compare": [
                    {
                        "key": _b64(key),
                        "target": "CREATE",
                        "result": "EQUAL",
                        "create_revision": "0",
                    }
                ],
                "success": [
                    {"request_put": {"key": _b64(key), "value": _b64(value), "lease": str(lease)}}
                ],
            },
        )
        return bool(out.get("succeeded"))

    def update(self, key: str, value: str, mod_revision: int) -> bool:
        """Put only if `key` was last changed at `mod_revision` (libcalico-go's compare-and-
        swap on a block's revision); False if someone else changed it first."""
        out = self._call(
            "kv/txn",
            {
                "compare": [
                    {
                        "key": _b64(key),
                        "target": "MOD",
                        "result": "EQUAL",
                        "mod_revision": str(mod_revision),
                    }
                ],
                "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
            },
        )
        return bool(out.get("succeeded"))

    def delete(self, key: str) -> None:
        """Delete one key."""
        self._call("kv/deleterange", {"key": _b64(key)})

    def grant(self, ttl: int) -> int:
        """A new etcd lease of `ttl` seconds; its ID."""
        return int(self._call("lease/grant", {"TTL": str(ttl)})["ID"])

    def ttl(self, lease: int) -> int:
        """Seconds left on etcd lease `lease` (-1: expired or unknown)."""
        return int(self._call("lease/timetolive", {"ID": str(lease)}).get("TTL", -1))

    def watch(self, prefix: str, start_revision: int) -> Iterator[Event]:
        """Events under `prefix` from `start_revision` on, until the stream breaks (EtcdError)
        or the revision was compacted (EtcdError: the caller re-lists)."""
        conn = _UnixConnection(self.sock, timeout=None)  # type: ignore[arg-type]
        try:
            conn.request(
                "POST",
                "/v3/watch",
                json.dumps(
                    {
                        "create_request": {
                            "key": _b64(prefix),
                            "range_end": _prefix_end(prefix),
                            "start_revision": str(start_revision),
                        }
                    }
                ),
            )
            resp = conn.getresponse()
            while True:
                line = resp.readline()
                if not line:
                    raise EtcdError("etcd closed the watch stream")
                result = json.loads(line).get("result", {})
                if result.get("compact_revision") or result.get("canceled"):
                    raise EtcdError(f"watch canceled: {result.get('cancel_reason', 'compacted')}")
                for ev in result.get("events", []):
                    kv = ev["kv"]
                    yield Event(
                        ev.get("type", "PUT"), _unb64(kv["key"]), _unb64(kv.get("value", ""))
                    )
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise EtcdError(f"watch {prefix}: {e}") from None
        finally:
            conn.close()


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        _unb64(raw["key"]),
        _unb64(raw.get("value", "")),
        int(raw.get("lease", 0)),
        int(raw.get("mod_revision", 0)),
    )


def socket_path(lab_dir: Path) -> Path:
    """The Unix socket the node agents reach etcd on."""
    return lab_dir / "etcd" / SOCKET_NAME


def argv(lab: str, lab_dir: Path) -> list[str]:
    """etcd for one lab: a single member, data in the lab's state directory."""
    loop = "http://127.0.0.1"
    return [
        "etcd",
        "--name",
        lab,
        "--data-dir",
        str(lab_dir / "etcd" / "data"),
        "--listen-client-urls",
        f"{loop}:{CLIENT_PORT},unix://{SOCKET_NAME}",
        "--advertise-client-urls",
        f"{loop}:{CLIENT_PORT}",
        "--listen-peer-urls",
        f"{loop}:{PEER_PORT}",
        "--initial-advertise-peer-urls",
        f"{loop}:{PEER_PORT}",
        "--initial-cluster",
        f"{lab}={loop}:{PEER_PORT}",
        "--initial-cluster-state",
        "new",
    ]


class Etcd:
    """The supervisor's handle on the lab's etcd: start, restart when it dies, stop."""

    def __init__(self, lab: str, lab_dir: Path) -> None:
        self.lab, self.dir = lab, lab_dir / "etcd"
        self.argv = argv(lab, lab_dir)
        self.client = Client(str(socket_path(lab_dir)))
        self.popen: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> int:
        """Start etcd (in this process's namespace, so the lab's) and wait until it answers;
        returns its PID."""
        self.dir.mkdir(parents=True, exist_ok=True)
        # A dead etcd leaves its socket file behind; the new one must bind afresh.
        (self.dir / SOCKET_NAME).unlink(missing_ok=True)
        with open(self.dir / "etcd.log", "ab") as log:
            # cwd: etcd creates the unix:// listener's file in its working directory.
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.dir
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                self.client.get_prefix("/")
                return self.popen.pid
            except EtcdError:
                if self.popen.poll() is not None:
                    raise EtcdError(
                        f"etcd exited ({self.popen.returncode}); see {self.dir / 'etcd.log'}"
                    ) from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def check(self) -> str | None:
        """Restart etcd if it died (its data dir keeps every key and lease); returns a warning
        for the lab's status, or None if it is running."""
        if self.popen is None or self.popen.poll() is None:
            return None
        code = self.popen.returncode
        if self.restarts >= MAX_RESTARTS:
            return f"etcd exited with {code} and was restarted {MAX_RESTARTS} times; giving up"
        self.restarts += 1
        self.start()
        return f"etcd exited with {code}; restarted ({self.restarts})"

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
