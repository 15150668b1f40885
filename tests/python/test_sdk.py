"""The official AXME Python SDK (axme 0.2.0) against a real intentd, used as its README shows."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from axme import AxmeAuthError, AxmeClient, AxmeValidationError

from conftest import PAYMENTS, Server, payment_intent, validate

TERMINAL = {"COMPLETED", "FAILED", "CANCELED", "TIMED_OUT"}


def _agent_handles_one(agent: AxmeClient, address: str, intent_id: str) -> dict[str, Any]:
    """The receiving agent: listen, fetch the intent, resume it with a result."""
    for delivery in agent.listen(address, wait_seconds=2, timeout_seconds=30):
        if delivery.get("intent_id") != intent_id:
            continue
        assert delivery["status"] == "DELIVERED", delivery
        assert delivery["intent_type"] == "payment.charge.v1", delivery
        assert delivery["delivery_attempt"] == 1, delivery
        assert isinstance(delivery["seq"], int) and delivery["seq"] >= 1, delivery
        intent = agent.get_intent(intent_id)["intent"]
        result = {"charged_cents": intent["payload"]["amount_cents"], "charge_id": "ch_" + intent_id[:8]}
        reply = agent.resume_intent(intent_id, result)
        assert reply["ok"] is True, reply
        return result
    raise AssertionError("listen ended without the intent")


def test_send_listen_resume_and_wait_for(server: Server, client: AxmeClient) -> None:
    agent_key = server.create_key("payments-agent", "agent", PAYMENTS)
    with server.client(agent_key) as agent, ThreadPoolExecutor(max_workers=1) as pool:
        intent_id = client.send_intent(payment_intent(amount_cents=4200))
        uuid.UUID(intent_id)
        handled = pool.submit(_agent_handles_one, agent, PAYMENTS, intent_id)

        final = client.wait_for(intent_id, wait_seconds=2, timeout_seconds=60)
        result = handled.result(timeout=60)

    assert final["status"] == "COMPLETED", final
    assert final["event_type"] == "intent.completed", final
    assert final["intent_id"] == intent_id

    got = client.get_intent(intent_id)
    validate(got, "api.intents.get.response.v1.json")
    intent = got["intent"]
    assert intent["status"] == "COMPLETED"
    assert intent["lifecycle_status"] == "COMPLETED"
    assert intent["result"] == result
    assert intent["delivery_attempt"] == 1

    events = client.list_intent_events(intent_id)
    validate(events, "api.intents.events.list.response.v1.json")
    types = [e["event_type"] for e in events["events"]]
    assert types[:3] == ["intent.created", "intent.submitted", "intent.delivered"], types
    assert types[-1] == "intent.completed", types
    assert [e["seq"] for e in events["events"]] == list(range(1, len(types) + 1))


def test_observe_yields_gapless_events_until_terminal(server: Server, client: AxmeClient) -> None:
    intent_id = client.send_intent(payment_intent())
    with ThreadPoolExecutor(max_workers=1) as pool:
        observed = pool.submit(lambda: list(client.observe(intent_id, wait_seconds=2, timeout_seconds=60)))
        client.resume_intent(intent_id, {"action": "progress", "step": "authorising"})
        client.resume_intent(intent_id, {"action": "wait", "waiting_reason": "WAITING_FOR_TOOL"})
        client.resume_intent(intent_id, {"approve_current_step": True, "expected_policy_generation": 0})
        client.resume_intent(intent_id, {"charge_id": "ch_1"})
        events = observed.result(timeout=90)

    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), seqs
    assert events[0]["event_type"] == "intent.created"
    assert events[1]["event_type"] == "intent.submitted"
    assert events[-1]["status"] == "COMPLETED"
    assert [e["status"] for e in events[:-1] if e["status"] in TERMINAL] == []
    statuses = [e["status"] for e in events]
    assert "WAITING" in statuses and "IN_PROGRESS" in statuses, statuses
    assert all(e["intent_id"] == intent_id for e in events)


def test_idempotent_create_and_conflict(client: AxmeClient) -> None:
    body = payment_intent()
    correlation_id = str(uuid.uuid4())
    request = dict(body, correlation_id=correlation_id)
    validate(request, "api.intents.create.request.v1.json")

    first = client.create_intent(body, correlation_id=correlation_id, idempotency_key="order-77")
    validate(first, "api.intents.create.response.v1.json")
    again = client.create_intent(body, correlation_id=correlation_id, idempotency_key="order-77")
    validate(again, "api.intents.create.response.v1.json")
    assert again["intent_id"] == first["intent_id"]

    changed = dict(body, payload={**body["payload"], "amount_cents": 1})
    with pytest.raises(AxmeValidationError) as info:
        client.create_intent(changed, correlation_id=correlation_id, idempotency_key="order-77")
    assert info.value.status_code == 409
    assert info.value.body["ok"] is False
    assert info.value.body["error"]["code"] == "idempotency_conflict"

    other = client.create_intent(body, correlation_id=correlation_id, idempotency_key="order-78")
    assert other["intent_id"] != first["intent_id"]


def test_second_resolve_is_409(client: AxmeClient) -> None:
    intent_id = client.send_intent(payment_intent())
    resolved = client.resolve_intent(intent_id, {"status": "COMPLETED", "result": {"charge_id": "ch_5"}})
    validate(resolved, "api.intents.resolve.response.v1.json")
    assert resolved["intent"]["status"] == "COMPLETED"
    assert resolved["event"]["event_type"] == "intent.completed"

    with pytest.raises(AxmeValidationError) as info:
        client.resolve_intent(intent_id, {"status": "CANCELED", "reason": "too late"})
    assert info.value.status_code == 409
    assert info.value.body["error"]["code"] in {"intent_terminal", "invalid_transition"}
    assert client.get_intent(intent_id)["intent"]["status"] == "COMPLETED"


def test_events_since_and_stream_resume(client: AxmeClient) -> None:
    intent_id = client.send_intent(payment_intent())
    client.resume_intent(intent_id, {"action": "progress"})
    client.resolve_intent(intent_id, {"status": "COMPLETED", "result": {}})

    everything = client.list_intent_events(intent_id)
    validate(everything, "api.intents.events.list.response.v1.json")
    all_events = everything["events"]
    assert [e["seq"] for e in all_events] == list(range(1, len(all_events) + 1))
    assert len(all_events) >= 4

    newer = client.list_intent_events(intent_id, since=2)
    validate(newer, "api.intents.events.list.response.v1.json")
    assert newer["events"] == all_events[2:]
    assert client.list_intent_events(intent_id, since=len(all_events))["events"] == []

    streamed = list(client.observe(intent_id, since=2, wait_seconds=2, timeout_seconds=30))
    assert [e["seq"] for e in streamed] == [e["seq"] for e in all_events[2:]]
    assert streamed[-1]["status"] == "COMPLETED"


def test_agent_listen_resumes_from_cursor(server: Server, client: AxmeClient) -> None:
    address = "agent://acme/prod/ledger"
    agent_key = server.create_key("ledger-agent", "agent", address)
    first = client.send_intent(payment_intent(to_agent=address))
    with server.client(agent_key) as agent:
        seen = []
        for delivery in agent.listen(address, wait_seconds=2, timeout_seconds=30):
            seen.append(delivery)
            if delivery["intent_id"] == first:
                # Settled before the stream closes: a closed stream gives back what it holds.
                agent.resume_intent(first, {"charge_id": "ch_first"})
                break
        cursor = seen[-1]["seq"]
        second = client.send_intent(payment_intent(to_agent=address))
        resumed = next(iter(agent.listen(address, since=cursor, wait_seconds=2, timeout_seconds=30)))
    assert resumed["intent_id"] == second
    assert resumed["seq"] > cursor
    assert resumed["status"] == "DELIVERED"


def test_agent_key_cannot_listen_elsewhere(server: Server) -> None:
    agent_key = server.create_key("ledger-only", "agent", "agent://acme/prod/ledger")
    with server.client(agent_key) as agent:
        with pytest.raises(AxmeAuthError) as info:
            next(iter(agent.listen(PAYMENTS, wait_seconds=1, timeout_seconds=10)))
    assert info.value.status_code == 403


def test_unknown_key_is_401(server: Server) -> None:
    with server.client("not-a-real-key-000000") as stranger:
        with pytest.raises(AxmeAuthError) as info:
            stranger.get_capabilities()
    assert info.value.status_code == 401
    assert info.value.body["error"]["code"] == "auth_failed"


def test_capabilities_match_the_reference_schema(client: AxmeClient) -> None:
    caps = client.get_capabilities()
    validate(caps, "api.capabilities.get.response.v1.json")


def test_controls_and_policy_generation_cas(client: AxmeClient) -> None:
    intent_id = client.send_intent(payment_intent())
    client.update_intent_controls(intent_id, {"controls_patch": {"priority": "high"}, "expected_policy_generation": 0})
    assert client.get_intent(intent_id)["intent"]["policy_generation"] == 1
    with pytest.raises(AxmeValidationError) as info:
        client.update_intent_policy(intent_id, {"grants_patch": {"refund": True}, "expected_policy_generation": 0})
    assert info.value.status_code == 409
    assert info.value.body["error"]["code"] == "policy_generation_mismatch"
    client.update_intent_policy(intent_id, {"grants_patch": {"refund": True}, "expected_policy_generation": 1})
    assert client.get_intent(intent_id)["intent"]["policy_generation"] == 2


def test_health_through_the_sdk(server: Server, client: AxmeClient) -> None:
    health = client.health()
    assert health["ok"] is True
    assert health["role"] == "leader"
    # Raw check that errors are JSON even on unknown routes.
    resp = httpx.get(f"{server.base_url}/v1/nope", headers={"x-api-key": server.admin_key}, timeout=10)
    assert resp.status_code == 404
    assert resp.json()["ok"] is False
