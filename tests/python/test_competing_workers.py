"""Issue 11, one consumer per delivery: two SDK `listen()` loops on one address (two replicas of
one worker) against a real intentd, as shared/API.md describes them: competing workers, each
delivery attempt sent to exactly one of them, spread over both, and a worker whose stream
closes mid-lease hands the intent to the other at once, as the next attempt.

Every wait is on a condition with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable

import httpx
import pytest
from axme import AxmeClient

from conftest import Server, payment_intent

# Far longer than any test here: an intent that changes hands quickly was given back, it did
# not run out.
LONG_LEASE_S = 600
DEADLINE_S = 60.0


def unique_address(name: str) -> str:
    return f"agent://acme/prod/{name}-{uuid.uuid4().hex[:8]}"


def wait_until(what: str, check: Callable[[], Any], timeout: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def open_streams(server: Server) -> int:
    """The node's consuming agent streams (`intentd_agent_streams_open`)."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("intentd_agent_streams_open "):
            return int(line.split()[1])
    raise AssertionError("no intentd_agent_streams_open in /metrics")


def long_leases(server: Server, address: str) -> None:
    resp = httpx.put(
        f"{server.base_url}/v1/agents/{address.removeprefix('agent://')}/binding",
        json={"delivery_mode": "stream", "ack_timeout_seconds": LONG_LEASE_S},
        headers={"x-api-key": server.admin_key},
        timeout=15,
    )
    assert resp.status_code == 200, resp.text


def start(target: Callable[[], None]) -> threading.Thread:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 (reported by join_clean)
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def join_clean(thread: threading.Thread, timeout: float = DEADLINE_S) -> None:
    thread.join(timeout)
    assert not thread.is_alive(), "worker did not finish in time"
    errors = thread.errors  # type: ignore[attr-defined]
    if errors:
        raise errors[0]


def delivery_events(client: AxmeClient, intent_id: str) -> tuple[list[dict], list[dict]]:
    events = client.list_intent_events(intent_id)["events"]
    return (
        [e for e in events if e["event_type"] == "intent.delivered"],
        [e for e in events if e["event_type"] == "intent.lease_expired"],
    )


def test_two_listen_workers_process_every_intent_once_and_share_them(server: Server, client: AxmeClient) -> None:
    address = unique_address("billing")
    key = server.create_key("billing-worker", "agent", address)
    long_leases(server, address)
    processed: list[tuple[str, str, str, int]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        """A replica of the worker, as the SDK's README writes one: act on each delivery and
        resume it with a result; this one also stops at an intent that says so."""
        with server.client(key) as agent:
            for d in agent.listen(address, wait_seconds=2, timeout_seconds=DEADLINE_S * 2):
                stop = bool(d["payload"].get("stop"))
                if not stop:
                    with lock:
                        processed.append((name, d["intent_id"], d["status"], d["delivery_attempt"]))
                agent.resume_intent(d["intent_id"], {"action": "complete", "worker": name})
                if stop:
                    return

    workers = [start(lambda: worker("w1")), start(lambda: worker("w2"))]
    wait_until("both workers' streams", lambda: open_streams(server) == 2)

    n = 12
    ids = [client.send_intent(payment_intent(to_agent=address, amount_cents=100 + i)) for i in range(n)]
    for intent_id in ids:
        final = client.wait_for(intent_id, wait_seconds=2, timeout_seconds=DEADLINE_S)
        assert final["status"] == "COMPLETED", final

    # One stop intent per worker: each worker ends after one, so each gets one.
    for _ in workers:
        stop = payment_intent(to_agent=address)
        stop["payload"]["stop"] = True
        client.send_intent(stop)
    for w in workers:
        join_clean(w)

    by_intent: dict[str, list[tuple[str, str, str, int]]] = {}
    for entry in processed:
        by_intent.setdefault(entry[1], []).append(entry)
    assert sorted(by_intent) == sorted(ids), processed
    for intent_id, entries in by_intent.items():
        assert len(entries) == 1, f"{intent_id} processed {len(entries)} times: {entries}"
        name, _, status, attempt = entries[0]
        assert (status, attempt) == ("DELIVERED", 1), entries
        intent = client.get_intent(intent_id)["intent"]
        assert intent["result"]["worker"] == name, intent
        assert intent["delivery_attempt"] == 1, intent
        delivered, lost = delivery_events(client, intent_id)
        assert len(delivered) == 1 and lost == [], (delivered, lost)
    shares = {name: sum(1 for e in processed if e[0] == name) for name in ("w1", "w2")}
    assert shares["w1"] > 0 and shares["w2"] > 0, f"one worker got everything: {shares}"


def test_a_worker_whose_stream_closes_mid_lease_hands_the_intent_over(server: Server, client: AxmeClient) -> None:
    address = unique_address("fulfilment")
    key = server.create_key("fulfilment-worker", "agent", address)
    long_leases(server, address)
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []

    def crashing_worker() -> None:
        """Takes one delivery and dies without settling it: its stream closes."""
        with server.client(key) as agent:
            stream = agent.listen(address, wait_seconds=30, timeout_seconds=DEADLINE_S)
            first.append(next(stream))
            stream.close()

    def healthy_worker() -> None:
        with server.client(key) as agent:
            for d in agent.listen(address, wait_seconds=30, timeout_seconds=DEADLINE_S):
                second.append(d)
                agent.resume_intent(d["intent_id"], {"action": "complete", "worker": "healthy"})
                return

    # The crashing worker's stream opens first, so the first delivery is its turn.
    crashing = start(crashing_worker)
    wait_until("the first worker's stream", lambda: open_streams(server) == 1)
    healthy = start(healthy_worker)
    wait_until("both workers' streams", lambda: open_streams(server) == 2)

    intent_id = client.send_intent(payment_intent(to_agent=address))
    join_clean(crashing)
    closed_at = time.monotonic()
    assert first and first[0]["intent_id"] == intent_id, first
    assert (first[0]["status"], first[0]["delivery_attempt"]) == ("DELIVERED", 1), first

    join_clean(healthy)
    handed_over_after = time.monotonic() - closed_at
    assert second and second[0]["intent_id"] == intent_id, second
    assert (second[0]["status"], second[0]["delivery_attempt"]) == ("DELIVERED", 2), second
    assert second[0]["seq"] > first[0]["seq"], (first, second)
    assert handed_over_after < 30, f"handed over after {handed_over_after:.1f}s with a {LONG_LEASE_S}s lease"

    final = client.wait_for(intent_id, wait_seconds=2, timeout_seconds=DEADLINE_S)
    assert final["status"] == "COMPLETED", final
    intent = client.get_intent(intent_id)["intent"]
    assert intent["result"]["worker"] == "healthy", intent
    assert intent["delivery_attempt"] == 2, intent
    delivered, lost = delivery_events(client, intent_id)
    assert [e["details"]["delivery_attempt"] for e in delivered] == [1, 2], delivered
    assert len(lost) == 1 and lost[0]["details"]["released"] is True, lost
    assert lost[0]["details"]["delivery_attempt"] == 1, lost


def test_a_stream_the_server_ends_keeps_its_lease_for_the_busy_worker(server: Server, client: AxmeClient) -> None:
    """`stream.timeout` ends an idle stream while the worker is still busy with what it
    received (the SDK reconnects only when the worker asks for the next delivery): that is
    not a worker going away, so the intent is not handed to anybody else."""
    address = unique_address("slow")
    key = server.create_key("slow-worker", "agent", address)
    long_leases(server, address)
    received: list[dict[str, Any]] = []
    may_finish = threading.Event()

    def slow_worker() -> None:
        with server.client(key) as agent:
            for d in agent.listen(address, wait_seconds=1, timeout_seconds=DEADLINE_S):
                received.append(d)
                assert may_finish.wait(DEADLINE_S), "never told to finish"
                agent.resume_intent(d["intent_id"], {"action": "complete", "worker": "slow"})
                return

    worker = start(slow_worker)
    wait_until("the worker's stream", lambda: open_streams(server) == 1)
    intent_id = client.send_intent(payment_intent(to_agent=address))
    wait_until("the delivery", lambda: received)
    # The server ends the quiet stream after wait_seconds while the worker is still busy.
    wait_until("the server to end the idle stream", lambda: open_streams(server) == 0)
    intent = client.get_intent(intent_id)["intent"]
    assert (intent["status"], intent["delivery_attempt"]) == ("DELIVERED", 1), intent
    may_finish.set()
    join_clean(worker)

    final = client.wait_for(intent_id, wait_seconds=2, timeout_seconds=DEADLINE_S)
    assert final["status"] == "COMPLETED", final
    delivered, lost = delivery_events(client, intent_id)
    assert len(delivered) == 1 and lost == [], (delivered, lost)
    assert client.get_intent(intent_id)["intent"]["delivery_attempt"] == 1
