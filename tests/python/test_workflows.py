"""Scenario workflows through the official SDK (issue 11): a three-step workflow (an agent
step, a person's approval, a timeout) applied with `apply_scenario` runs whole in a
three-node cluster, and the leader is killed in the middle of it."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cluster, wait_leader

WORKER = "agent://acme/prod/charger"
LEAD = "agent://acme/people/lead"


def bundle() -> dict:
    return {
        "scenario_id": "wf.sdk.v1",
        "title": "Charge, approve, wait for settlement",
        "agents": [{"role": "charger", "address": WORKER, "delivery_mode": "stream"}],
        "humans": [{"role": "lead", "contact": LEAD}],
        "workflow": {"steps": [
            {"step_id": "charge", "assigned_to": "charger"},
            {"step_id": "approve", "assigned_to": "lead", "requires_approval": True,
             "human_task": {"title": "Approve the charge?", "task_type": "approval",
                            "allowed_outcomes": ["approved", "rejected"]}},
            {"step_id": "settle", "runtime_type": "timeout", "runtime_config": {"seconds": 2}},
        ]},
        "intent": {"type": "payment.charge.v1", "payload": {"amount_cents": 1999}},
    }


def steps(intent: dict) -> dict[str, dict]:
    return {s["step_id"]: s for s in intent["workflow"]["steps"]}


def test_a_three_step_workflow_survives_a_leader_kill(tmp_path: Path) -> None:
    with run_cluster(tmp_path) as nodes:
        leader = wait_leader(nodes)
        follower = next(n for n in nodes if n is not leader)
        with follower.server.client() as client:
            applied = client.apply_scenario(bundle(), idempotency_key="wf-sdk-1")
            assert applied["warnings"] == [], applied
            intent_id = applied["intent_id"]
            assert applied["workflow"]["current_step"] == "charge"

            # The agent step: a worker's listen() gets it and resumes it.
            for delivery in client.listen(WORKER, wait_seconds=5, timeout_seconds=30):
                assert delivery["intent_id"] == intent_id
                client.resume_intent(intent_id, {"charged": True})
                break
            intent = client.get_intent(intent_id)["intent"]
            assert intent["status"] == "WAITING", intent
            assert intent["waiting_reason"] == "WAITING_FOR_HUMAN"
            assert intent["pending_with"] == {"type": "human", "ref": LEAD}
            assert steps(intent)["charge"]["state"] == "succeeded"

            # The leader dies while the person's task waits; the approval goes through the
            # follower to the new leader.
            leader.kill()
            new_leader = wait_leader(nodes)
            assert new_leader is not leader
            client.approve_inbox_thread(intent_id, {"comment": "ok"}, owner_agent=LEAD,
                                        idempotency_key="wf-sdk-approve")
            intent = client.get_intent(intent_id)["intent"]
            assert intent["workflow"]["current_step"] == "settle", intent
            assert intent["waiting_reason"] == "WAITING_FOR_TIME"

            # The new leader's engine ticks the timeout: the step fails with step_timeout,
            # and with no on_failure the workflow (and the intent) fails.
            terminal = client.wait_for(intent_id, timeout_seconds=60)
            assert terminal["event_type"] == "intent.failed", terminal
            intent = client.get_intent(intent_id)["intent"]
            assert intent["error"]["code"] == "step_timeout", intent
            assert {k: s["state"] for k, s in steps(intent).items()} == {
                "charge": "succeeded", "approve": "succeeded", "settle": "failed",
            }
            events = client.list_intent_events(intent_id)["events"]
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            started = [e["details"]["step_id"] for e in events
                       if e["event_type"] == "workflow.step_started"]
            assert started == ["charge", "approve", "settle"], started
