"""Fixtures that run the real intentd binary for the SDK suite.

Each test gets its own one-node server on free loopback ports with a temporary data
directory and an explicit admin key; readiness is `GET /health` answering 200 as leader,
waited for with a deadline. The binary is $INTENTD_BIN, else <repo>/target/debug/intentd.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import httpx
import jsonschema
import pytest
from axme import AxmeClient, AxmeClientConfig

REPO = Path(__file__).resolve().parents[2]
# CI lays shared/ beside the clone; a developer's machine may not have it. The reference is
# read there, never copied into the repository.
SHARED_REFERENCE = REPO.parent / "shared" / "reference" / "axme-api"
SHARED_SCHEMAS = SHARED_REFERENCE / "schemas" / "public_api"

READY_DEADLINE_S = 60.0
STOP_DEADLINE_S = 20.0

PAYMENTS = "agent://acme/prod/payments"


def intentd_bin() -> Path:
    return Path(os.environ.get("INTENTD_BIN", REPO / "target" / "debug" / "intentd"))


# Ports for test servers, below the kernel's ephemeral range (32768-60999 by default): a port
# picked by binding to 0 and released could be taken by any process's outgoing connection
# before the server binds it. A lock file per port keeps concurrent test processes apart;
# the locks are held until this process exits (a restarted server keeps its address).
_TEST_PORTS = range(15_000, 20_000)
_reserved: list = []


def _free_ports(n: int) -> list[int]:
    lock_dir = Path(tempfile.gettempdir()) / "intentd-sdk-ports"
    lock_dir.mkdir(exist_ok=True)
    span = len(_TEST_PORTS)
    start = (os.getpid() * 7919 + len(_reserved)) % span
    ports: list[int] = []
    for i in range(span):
        if len(ports) == n:
            break
        port = _TEST_PORTS[(start + i) % span]
        lock = open(lock_dir / f"{port}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            lock.close()
            continue
        finally:
            probe.close()
        _reserved.append(lock)
        ports.append(port)
    if len(ports) != n:
        raise RuntimeError(f"not enough free test ports in {_TEST_PORTS}")
    return ports


@dataclass
class Server:
    base_url: str
    admin_key: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    # host:port of the public gRPC API.
    grpc_target: str = ""

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def client(self, api_key: str | None = None) -> AxmeClient:
        return AxmeClient(AxmeClientConfig(base_url=self.base_url, api_key=api_key or self.admin_key))

    def create_key(self, name: str, role: str, address: str | None = None) -> str:
        body: dict[str, Any] = {"name": name, "role": role}
        if address is not None:
            body["address"] = address
        resp = httpx.post(
            f"{self.base_url}/v1/admin/keys",
            json=body,
            headers={"x-api-key": self.admin_key},
            timeout=15,
        )
        assert resp.status_code == 200, resp.text
        key = resp.json()["key"]
        assert isinstance(key, str) and key
        return key


def stop_process(process: subprocess.Popen) -> None:
    """Stops a server the way an operator would (SIGTERM), killing it if it overruns."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            pytest.fail(f"intentd exited with {code} before it was ready\n{server.log_tail()}")
        try:
            resp = httpx.get(f"{server.base_url}/health", timeout=2)
            if resp.status_code == 200 and resp.json().get("role") == "leader":
                return
            last = f"{resp.status_code} {resp.text}"
        except (httpx.HTTPError, ValueError) as exc:
            last = repr(exc)
        time.sleep(0.05)
    pytest.fail(f"intentd not ready after {READY_DEADLINE_S}s; last /health: {last}\n{server.log_tail()}")


@contextmanager
def run_intentd(tmp_path: Path, extra_args: Sequence[str] = ()) -> Iterator[Server]:
    """Starts a one-node intentd with `extra_args` added to `serve`, waits until it is ready,
    and stops it (SIGTERM, then SIGKILL after a deadline) when the block ends."""
    binary = intentd_bin()
    if not binary.is_file():
        pytest.fail(f"intentd binary not found at {binary}: build it or set INTENTD_BIN")
    http_port, grpc_port, raft_port = _free_ports(3)
    admin_key = "sdk-admin-" + secrets.token_hex(16)
    data_dir = tmp_path / "data"
    log_path = tmp_path / "server.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [
            str(binary), "serve",
            "--data-dir", str(data_dir),
            "--http-addr", f"127.0.0.1:{http_port}",
            "--grpc-addr", f"127.0.0.1:{grpc_port}",
            "--raft-addr", f"127.0.0.1:{raft_port}",
            "--node-id", "1",
            "--admin-key", admin_key,
            *extra_args,
        ],
        # The test alone decides the configuration: no INTENTD_* from the caller's shell.
        env={k: v for k, v in os.environ.items() if not k.startswith("INTENTD_")},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    srv = Server(f"http://127.0.0.1:{http_port}", admin_key, data_dir, log_path, process, f"127.0.0.1:{grpc_port}")
    try:
        _wait_ready(srv)
        yield srv
    finally:
        stop_process(process)
        log.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with run_intentd(tmp_path) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[AxmeClient]:
    with server.client() as c:
        yield c


# Where each reference schema's counterpart is in intentd's own OpenAPI document:
# (method, path, "request" or the answer's status).
SCHEMA_OPERATIONS: dict[str, tuple[str, str, str]] = {
    "api.capabilities.get.response.v1.json": ("get", "/v1/capabilities", "200"),
    "api.inbox.list.response.v1.json": ("get", "/v1/inbox", "200"),
    "api.inbox.thread.response.v1.json": ("get", "/v1/inbox/{thread_id}", "200"),
    "api.intents.create.request.v1.json": ("post", "/v1/intents", "request"),
    "api.intents.create.response.v1.json": ("post", "/v1/intents", "200"),
    "api.intents.events.list.response.v1.json": ("get", "/v1/intents/{intent_id}/events", "200"),
    "api.intents.get.response.v1.json": ("get", "/v1/intents/{intent_id}", "200"),
    "api.intents.resolve.request.v1.json": ("post", "/v1/intents/{intent_id}/resolve", "request"),
    "api.intents.resolve.response.v1.json": ("post", "/v1/intents/{intent_id}/resolve", "200"),
    "api.webhooks.events.replay.response.v1.json": ("post", "/v1/webhooks/events/{event_id}/replay", "200"),
    "api.webhooks.events.response.v1.json": ("post", "/v1/webhooks/events", "200"),
    "api.webhooks.subscriptions.delete.response.v1.json": (
        "delete", "/v1/webhooks/subscriptions/{subscription_id}", "200"),
    "api.webhooks.subscriptions.list.response.v1.json": ("get", "/v1/webhooks/subscriptions", "200"),
    "api.webhooks.subscriptions.response.v1.json": ("post", "/v1/webhooks/subscriptions", "200"),
}

_served_document: dict[str, Any] = {}


def served_document() -> dict[str, Any]:
    """intentd's `GET /openapi.json`, fetched once per session from a server of its own (the
    document depends only on the binary)."""
    if not _served_document:
        with tempfile.TemporaryDirectory(prefix="intentd-openapi-") as tmp:
            with run_intentd(Path(tmp)) as srv:
                resp = httpx.get(f"{srv.base_url}/openapi.json", timeout=15)
                assert resp.status_code == 200, resp.text
                _served_document.update(resp.json())
    return _served_document


def document_schema(method: str, path: str, which: str) -> dict[str, Any]:
    """The schema of an operation's request body (`which="request"`) or of its answer with
    that status, from the served document, with the document's components beside it so its
    `$ref`s resolve."""
    doc = served_document()
    op = doc["paths"][path][method]
    if which == "request":
        media = op["requestBody"]["content"]["application/json"]
    else:
        media = op["responses"][which]["content"]["application/json"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc.get("components", {}),
        **media["schema"],
    }


def check_schema(instance: Any, schema: dict[str, Any], what: str) -> None:
    """Validates with formats (uuid, date-time) checked, not just annotated."""
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        details = "\n".join(f"  at /{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
        pytest.fail(f"does not match {what}:\n{details}\ninstance: {json.dumps(instance)[:2000]}")


def validate(instance: Any, schema_name: str) -> None:
    """Checks a request or an answer against intentd's served OpenAPI document (the operation
    the reference schema `schema_name` describes) and, when shared/ is on this machine,
    against that reference schema itself."""
    method, path, which = SCHEMA_OPERATIONS[schema_name]
    check_schema(instance, document_schema(method, path, which), f"{method.upper()} {path} {which} in /openapi.json")
    reference = SHARED_SCHEMAS / schema_name
    if reference.is_file():
        check_schema(instance, json.loads(reference.read_text()), f"the reference {schema_name}")


def payment_intent(to_agent: str = PAYMENTS, amount_cents: int = 1250) -> dict[str, Any]:
    return {
        "intent_type": "payment.charge.v1",
        "to_agent": to_agent,
        "payload": {"amount_cents": amount_cents, "currency": "EUR", "order_id": "ord-" + uuid.uuid4().hex[:8]},
    }


@dataclass
class Node:
    """One node of a test cluster: its server, and how to start it again."""

    node_id: int
    server: Server
    args: list[str]
    log: Any

    def alive(self) -> bool:
        return self.server.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown path runs, as in a crash."""
        self.server.process.kill()
        self.server.process.wait()


def _health(node: Node) -> dict[str, Any] | None:
    try:
        resp = httpx.get(f"{node.server.base_url}/health", timeout=2)
        return resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def wait_leader(nodes: Sequence[Node], deadline_s: float = READY_DEADLINE_S) -> Node:
    """The node every running node names as leader, waited for with a deadline."""
    deadline = time.monotonic() + deadline_s
    last: list[Any] = []
    while time.monotonic() < deadline:
        running = [n for n in nodes if n.alive()]
        last = [_health(n) for n in running]
        leaders = {h.get("leader_id") for h in last if h is not None}
        if all(h is not None for h in last) and len(leaders) == 1:
            leader_id = leaders.pop()
            for n, h in zip(running, last):
                if n.node_id == leader_id and h is not None and h.get("role") == "leader":
                    return n
        time.sleep(0.05)
    pytest.fail(f"no agreed leader after {deadline_s}s: {last}")


@contextmanager
def run_cluster(tmp_path: Path, n: int = 3) -> Iterator[list[Node]]:
    """Starts an n-node intentd cluster on loopback (one admin key for all), waits until it
    has a leader every node agrees on, and stops every node when the block ends."""
    binary = intentd_bin()
    if not binary.is_file():
        pytest.fail(f"intentd binary not found at {binary}: build it or set INTENTD_BIN")
    ports = [_free_ports(3) for _ in range(n)]
    peers = ",".join(f"{i + 1}=127.0.0.1:{p[2]}" for i, p in enumerate(ports))
    admin_key = "sdk-admin-" + secrets.token_hex(16)
    nodes: list[Node] = []
    try:
        for i, (http_port, grpc_port, raft_port) in enumerate(ports):
            node_id = i + 1
            data_dir = tmp_path / f"node{node_id}"
            log_path = tmp_path / f"node{node_id}.log"
            log = open(log_path, "wb")
            args = [
                str(binary), "serve",
                "--data-dir", str(data_dir),
                "--http-addr", f"127.0.0.1:{http_port}",
                "--grpc-addr", f"127.0.0.1:{grpc_port}",
                "--raft-addr", f"127.0.0.1:{raft_port}",
                "--node-id", str(node_id),
                "--peers", peers,
                "--admin-key", admin_key,
            ]
            process = subprocess.Popen(
                args,
                env={k: v for k, v in os.environ.items() if not k.startswith("INTENTD_")},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            srv = Server(f"http://127.0.0.1:{http_port}", admin_key, data_dir, log_path, process,
                         f"127.0.0.1:{grpc_port}")
            nodes.append(Node(node_id, srv, args, log))
        wait_leader(nodes)
        yield nodes
    finally:
        for node in nodes:
            stop_process(node.server.process)
            node.log.close()
