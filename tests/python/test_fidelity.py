"""Issue 11, programs written for the hosted AXME platform, run unchanged against intentd with
the official SDK (axme 0.2.0):

- an owner approves the current step of the intent it just created
  (`resume_intent(id, {"approve_current_step": True, ...}, owner_agent=...)`), then resolves it;
- the replacing-webhooks seed's scenario bundle, as published, applies with
  `apply_scenario`, and its agent (listen, resume with `action: complete`) completes it;
- a webhook subscription to a host that does not resolve from the server right now is
  accepted; literal internal addresses are still refused.

Every wait is on a condition with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from axme import AxmeAuthError, AxmeClient, AxmeValidationError

from conftest import REPO, Server, payment_intent, validate

SEED_BUNDLE = REPO / "tests" / "fixtures" / "replacing-webhooks.scenario.json"
OWNER = "agent://acme/prod/checkout"


def _approve(client: AxmeClient, intent_id: str, owner: str = OWNER, **extra: Any) -> dict[str, Any]:
    """The owner's approval exactly as a hosted-platform program sends it."""
    body = {"approve_current_step": True, "reason": "the owner gates this step itself", **extra}
    return client.resume_intent(intent_id, body, owner_agent=owner)


def _event_types(client: AxmeClient, intent_id: str) -> list[str]:
    events = client.list_intent_events(intent_id)["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), events
    return [e["event_type"] for e in events]


def test_owner_approves_its_new_intent_then_resolves_it(server: Server) -> None:
    owner_key = server.create_key("checkout-program", "client")
    with server.client(owner_key) as owner:
        intent_id = owner.send_intent(payment_intent(to_agent="agent://acme/prod/gated-worker"))
        assert owner.get_intent(intent_id)["intent"]["status"] == "SUBMITTED"

        reply = _approve(owner, intent_id)
        assert reply["ok"] is True, reply
        assert reply["applied"] is True, reply
        assert reply["policy_generation"] == 1, reply
        assert reply["intent"]["intent_id"] == intent_id, reply
        assert reply["intent"]["status"] == "IN_PROGRESS", reply

        # Already IN_PROGRESS: the approval is recorded, the generation moves (CAS token).
        with pytest.raises(AxmeValidationError) as info:
            _approve(owner, intent_id, expected_policy_generation=0)
        assert info.value.status_code == 409
        assert info.value.body["error"]["code"] == "policy_generation_mismatch"
        again = _approve(owner, intent_id, expected_policy_generation=1)
        assert (again["applied"], again["policy_generation"]) == (True, 2), again
        assert again["intent"]["status"] == "IN_PROGRESS", again

        resolved = owner.resolve_intent(intent_id, {"status": "COMPLETED", "result": {"charged": True}})
        validate(resolved, "api.intents.resolve.response.v1.json")
        assert resolved["intent"]["status"] == "COMPLETED"

        assert _event_types(owner, intent_id) == [
            "intent.created", "intent.submitted", "intent.resumed", "intent.step_approved",
            "intent.completed",
        ]
        events = owner.list_intent_events(intent_id)["events"]
        assert events[2]["actor"] == OWNER, events[2]
        assert events[2]["details"]["approved_in"] == "SUBMITTED", events[2]

        with pytest.raises(AxmeValidationError) as info:
            _approve(owner, intent_id)
        assert info.value.status_code == 409
        assert info.value.body["error"]["code"] == "intent_terminal"
        assert owner.get_intent(intent_id)["intent"]["policy_generation"] == 2


def test_owner_approval_after_delivery_and_while_waiting(server: Server) -> None:
    worker = "agent://acme/prod/slow-worker"
    owner_key = server.create_key("approvals-program", "client")
    worker_key = server.create_key("slow-worker", "agent", worker)
    with server.client(owner_key) as owner, server.client(worker_key) as agent:
        # DELIVERED: the worker's stream leased it; the owner's approval takes it over.
        intent_id = owner.send_intent(payment_intent(to_agent=worker))
        stream = agent.listen(worker, wait_seconds=2, timeout_seconds=30)
        delivery = next(stream)
        stream.close()
        assert (delivery["intent_id"], delivery["status"]) == (intent_id, "DELIVERED"), delivery
        reply = _approve(owner, intent_id)
        assert reply["intent"]["status"] == "IN_PROGRESS", reply
        # The worker can still finish the work it was handed.
        done = agent.resume_intent(intent_id, {"action": "complete", "receipt": "r-1"})
        assert done["intent"]["status"] == "COMPLETED", done

        # WAITING for a person.
        body = payment_intent(to_agent=worker)
        body["human_task"] = {"title": "Approve the charge", "task_type": "approval"}
        waiting = owner.send_intent(body)
        assert owner.get_intent(waiting)["intent"]["status"] == "WAITING"
        reply = _approve(owner, waiting)
        assert reply["intent"]["status"] == "IN_PROGRESS", reply
        assert reply["intent"]["pending_with"]["type"] == "agent", reply


def test_an_agent_key_approves_only_as_itself(server: Server) -> None:
    key = server.create_key("checkout-agent", "agent", OWNER)
    with server.client(key) as owner:
        intent_id = owner.send_intent(payment_intent(to_agent="agent://acme/prod/elsewhere"))
        with pytest.raises(AxmeAuthError) as info:
            _approve(owner, intent_id, owner="agent://acme/prod/not-me")
        assert info.value.status_code == 403
        reply = _approve(owner, intent_id)
        assert reply["intent"]["status"] == "IN_PROGRESS", reply


def _seed_agent_completes(agent: AxmeClient, address: str, intent_id: str) -> dict[str, Any]:
    """The seed's agent loop: act on DELIVERED/CREATED/IN_PROGRESS, resume with a result."""
    for delivery in agent.listen(address, wait_seconds=2, timeout_seconds=60):
        if delivery.get("intent_id") != intent_id:
            continue
        assert delivery["status"] in ("DELIVERED", "CREATED", "IN_PROGRESS"), delivery
        payload = agent.get_intent(intent_id)["intent"]["payload"]
        result = {"action": "complete", "order_id": payload["order_id"], "status": "captured"}
        return agent.resume_intent(intent_id, result)
    raise AssertionError("listen ended without the scenario's intent")


def test_the_seed_scenario_bundle_applies_and_runs(server: Server, client: AxmeClient) -> None:
    bundle = json.loads(SEED_BUNDLE.read_text())
    assert bundle["scenario_id"] == "replacing-webhooks.demo.v1" and "title" in bundle

    checked = client.validate_scenario(bundle)
    assert checked["valid"] is True and checked["warnings"] == [], checked

    applied = client.apply_scenario(bundle)
    assert applied["ok"] is True, applied
    assert applied["scenario_id"] == "replacing-webhooks.demo.v1", applied
    assert applied["warnings"] == [], applied
    assert applied["agents"] == [
        {"role": "payment_service", "address": "agent://payment-service-demo", "created": True},
    ], applied
    intent_id = applied["intent_id"]
    uuid.UUID(intent_id)

    with server.client() as agent, ThreadPoolExecutor(max_workers=1) as pool:
        handled = pool.submit(_seed_agent_completes, agent, "payment-service-demo", intent_id)
        final = client.wait_for(intent_id, wait_seconds=2, timeout_seconds=60)
        resumed = handled.result(timeout=60)
    assert resumed["intent"]["status"] == "COMPLETED", resumed
    assert final["status"] == "COMPLETED", final
    intent = client.get_intent(intent_id)["intent"]
    assert intent["result"]["order_id"] == bundle["intent"]["payload"]["order_id"], intent
    assert intent["max_delivery_attempts"] == 3, intent

    # Unknown keys are named in the answer, not refused.
    extended = dict(bundle, colour="teal", idempotency_key="seed-" + uuid.uuid4().hex)
    answer = client.apply_scenario(extended)
    assert answer["warnings"] == ["unknown field ignored: colour"], answer


def _secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def test_a_subscription_to_a_host_that_does_not_resolve_yet_is_accepted(client: AxmeClient) -> None:
    created = client.upsert_webhook_subscription({
        "callback_url": "https://integrator.example/hook",
        "event_types": ["intent.completed"],
        "secret": _secret(),
    })
    validate(created, "api.webhooks.subscriptions.response.v1.json")
    sub = created["subscription"]
    assert sub["callback_url"] == "https://integrator.example/hook", sub
    listed = client.list_webhook_subscriptions()["subscriptions"]
    assert [s["subscription_id"] for s in listed] == [sub["subscription_id"]], listed

    for url in ("http://10.0.0.7/hook", "http://[fd00::1]/hook", "http://127.0.0.1:9/hook"):
        with pytest.raises(AxmeValidationError) as info:
            client.upsert_webhook_subscription({"callback_url": url, "event_types": ["intent.completed"],
                                                "secret": _secret()})
        assert info.value.status_code == 422, url
        assert info.value.body["error"]["code"] == "schema_invalid", info.value.body
