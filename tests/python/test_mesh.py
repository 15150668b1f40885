"""The mesh through the official SDK's `client.mesh`: heartbeats with metrics, the agent
listing and detail, kill and resume with their role checks, the event log; a kill during
delivery on a three-node cluster across a leader change (nothing delivered while killed,
nothing lost or failed, everything delivered after the resume); and gRPC reflection v1alpha
as Python's grpcio-reflection client asks it."""
from __future__ import annotations

import os
import secrets
import subprocess
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

import grpc
import httpx
import pytest
from axme import AxmeClient, AxmeClientConfig
from axme.exceptions import AxmeHttpError

from conftest import PAYMENTS, Server, _free_ports, intentd_bin, stop_process

ADDRESS = PAYMENTS.removeprefix("agent://")
DEADLINE_S = 60.0


def _body(to_agent: str = PAYMENTS) -> dict[str, Any]:
    return {"intent_type": "payment.charge.v1", "to_agent": to_agent, "payload": {"amount_cents": 100}}


def _receive(base_url: str, key: str, max_n: int, wait: int) -> list[str]:
    resp = httpx.post(
        f"{base_url}/v1/agents/{ADDRESS}/intents/receive",
        json={"max": max_n, "wait_seconds": wait},
        headers={"x-api-key": key},
        timeout=wait + 15,
    )
    assert resp.status_code == 200, resp.text
    return [d["intent_id"] for d in resp.json()["deliveries"]]


def test_mesh_calls_through_the_sdk(server: Server) -> None:
    admin = server.client()
    agent_key = server.create_key("payments", "agent", PAYMENTS)
    client_key = server.create_key("someone", "client")
    agent = server.client(agent_key)
    outsider = server.client(client_key)

    agent.mesh.report_metric(success=True, latency_ms=10.0, cost_usd=0.25)
    agent.mesh.report_metric(success=False, latency_ms=30.0)
    beat = agent.mesh.heartbeat(metrics=agent.mesh._flush_metrics())
    assert beat["ok"] is True and beat["replicated"] is True and beat["health"] == "healthy"
    with pytest.raises(AxmeHttpError) as refused:
        outsider.mesh.heartbeat()
    assert refused.value.status_code == 403

    listed = admin.mesh.list_agents(limit=10)
    row = next(a for a in listed["agents"] if a["address"] == PAYMENTS)
    assert row["health"] == "healthy"
    assert row["metrics"]["intents_total"] == 2 and row["metrics"]["intents_failed"] == 1
    assert row["metrics"]["avg_latency_ms"] == pytest.approx(20.0)
    assert admin.mesh.list_agents(health="killed")["agents"] == []

    for key in (agent, outsider):
        with pytest.raises(AxmeHttpError) as refused:
            key.mesh.kill(ADDRESS)
        assert refused.value.status_code == 403
    killed = admin.mesh.kill(ADDRESS)
    assert killed["agent"]["health"] == "killed"
    assert [a["address"] for a in admin.mesh.list_agents(health="killed")["agents"]] == [PAYMENTS]
    with pytest.raises(AxmeHttpError) as refused:
        agent.create_intent(_body("agent://acme/prod/other"), correlation_id=str(uuid.uuid4()))
    assert refused.value.status_code == 403 and "killed" in str(refused.value)
    detail = admin.mesh.get_agent(ADDRESS)
    assert detail["agent"]["killed"] is True
    assert [e["event_type"] for e in detail["events"]] == ["agent.killed"]

    resumed = admin.mesh.resume(ADDRESS)
    assert resumed["agent"]["health"] == "healthy"
    agent.create_intent(_body("agent://acme/prod/other"), correlation_id=str(uuid.uuid4()))
    events = admin.mesh.list_events(limit=10)["events"]
    assert [e["event_type"] for e in events] == ["agent.killed", "agent.resumed"]
    assert [e["event_type"] for e in admin.mesh.list_events(event_type="agent.resumed")["events"]] == [
        "agent.resumed"
    ]


@contextmanager
def _three_nodes(tmp_path: Path) -> Iterator[list[dict[str, Any]]]:
    ports = _free_ports(9)
    admin_key = "sdk-admin-" + secrets.token_hex(16)
    peers = ",".join(f"{i + 1}=127.0.0.1:{ports[i * 3 + 2]}" for i in range(3))
    nodes: list[dict[str, Any]] = []
    with ExitStack() as stack:
        for i in range(3):
            http, grpc_port, raft = ports[i * 3 : i * 3 + 3]
            log = stack.enter_context(open(tmp_path / f"node{i + 1}.log", "wb"))
            process = subprocess.Popen(
                [
                    str(intentd_bin()), "serve",
                    "--node-id", str(i + 1),
                    "--data-dir", str(tmp_path / f"data{i + 1}"),
                    "--http-addr", f"127.0.0.1:{http}",
                    "--grpc-addr", f"127.0.0.1:{grpc_port}",
                    "--raft-addr", f"127.0.0.1:{raft}",
                    "--peers", peers,
                    "--admin-key", admin_key,
                ],
                env={k: v for k, v in os.environ.items() if not k.startswith("INTENTD_")},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
            nodes.append({"id": i + 1, "url": f"http://127.0.0.1:{http}", "process": process, "key": admin_key})
        try:
            yield nodes
        finally:
            for node in nodes:
                stop_process(node["process"])


def _leader(nodes: list[dict[str, Any]], among: list[dict[str, Any]]) -> dict[str, Any]:
    """The node that answers /health as leader, waited for with a deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for node in among:
            try:
                resp = httpx.get(f"{node['url']}/health", timeout=2)
                if resp.status_code == 200 and resp.json().get("role") == "leader":
                    return node
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    pytest.fail("no leader elected in time")


@pytest.mark.timeout(240)
def test_a_kill_during_delivery_survives_a_leader_change(tmp_path: Path) -> None:
    with _three_nodes(tmp_path) as nodes:
        leader = _leader(nodes, nodes)
        follower = next(n for n in nodes if n is not leader)
        admin = AxmeClient(AxmeClientConfig(base_url=follower["url"], api_key=follower["key"]))
        resp = httpx.put(
            f"{follower['url']}/v1/agents/{ADDRESS}/binding",
            json={"delivery_mode": "poll", "ack_timeout_seconds": 60, "max_delivery_attempts": 1},
            headers={"x-api-key": follower["key"]},
            timeout=15,
        )
        assert resp.status_code == 200, resp.text
        ids = [
            admin.create_intent(_body(), correlation_id=str(uuid.uuid4()), idempotency_key=f"mesh-{i}")["intent_id"]
            for i in range(5)
        ]
        in_flight = _receive(follower["url"], follower["key"], 2, 5)
        assert len(in_flight) == 2

        admin.mesh.kill(ADDRESS)
        for intent_id in in_flight:
            events = admin.list_intent_events(intent_id)["events"]
            assert events[-1]["event_type"] == "intent.delivery_held"
            assert events[-1]["details"]["reason"] == "agent_killed"

        leader["process"].kill()
        leader["process"].wait()
        survivors = [n for n in nodes if n is not leader]
        _leader(nodes, survivors)
        other = next(n for n in survivors if n is not follower)
        via_other = AxmeClient(AxmeClientConfig(base_url=other["url"], api_key=other["key"]))
        assert _receive(other["url"], other["key"], 10, 1) == [], "delivered while killed"
        detail = via_other.mesh.get_agent(ADDRESS)
        assert detail["agent"]["health"] == "killed"

        via_other.mesh.resume(ADDRESS)
        delivered: list[str] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(delivered) < len(ids) and time.monotonic() < deadline:
            for intent_id in _receive(other["url"], other["key"], 10, 10):
                via_other.resume_intent(intent_id, {"action": "complete"})
                delivered.append(intent_id)
        assert sorted(delivered) == sorted(ids), "each intent delivered once after the resume"
        for intent_id in ids:
            assert via_other.get_intent(intent_id)["intent"]["status"] == "COMPLETED"
        events = via_other.mesh.list_events()["events"]
        assert [e["event_type"] for e in events] == ["agent.killed", "agent.resumed"]
        assert events[-1]["released"] == len(ids)


def test_grpc_reflection_answers_v1alpha(server: Server) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.grpc_target) as channel:
        grpc.channel_ready_future(channel).result(timeout=DEADLINE_S)
        db = ProtoReflectionDescriptorDatabase(channel)
        services = db.get_services()
        assert "intentd.v1.IntentService" in services
        assert "grpc.reflection.v1alpha.ServerReflection" in services
        found = db.FindFileContainingSymbol("intentd.v1.IntentService")
        assert found.package == "intentd.v1"
