"""Issue 4, the delivery engine, end to end: the official SDK (axme 0.2.0) and real receivers
against a real intentd, checked against docs/delivery-design.md and shared/API.md.

- stream binding: a lease that runs out is redelivered (attempt 2) to the next consumer;
- poll binding: long-poll receive leases deliveries, resume completes them;
- http binding: a real HTTP receiver on 127.0.0.1 that checks EVERY push with the reference
  Standard Webhooks verifier; retries with backoff, dead letter after exactly
  max_delivery_attempts, replay as a new intent;
- inbox: human task, reminders, escalation, approve (comment required);
- deadline: TIMED_OUT at deadline_at;
- webhooks: subscriptions, signed event delivery, replay, counters, lifecycle events.

Every wait is on a condition with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import trustme
from axme import AxmeClient, AxmeValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from conftest import Server, payment_intent, run_intentd, validate

# Small backoffs so retries happen in milliseconds; loopback receivers allowed (SSRF list).
DELIVERY_ARGS = [
    "--delivery-allow-hosts", "127.0.0.1",
    "--delivery-base-backoff-ms", "50",
    "--delivery-max-backoff-ms", "200",
    "--delivery-timeout-ms", "3000",
    "--max-delivery-attempts", "5",
]

TERMINAL = {"COMPLETED", "FAILED", "CANCELED", "TIMED_OUT"}
MANAGER = "agent://acme/prod/manager"


@pytest.fixture
def dserver(tmp_path: Path) -> Iterator[Server]:
    """A one-node intentd with the delivery engine tuned for tests."""
    with run_intentd(tmp_path, DELIVERY_ARGS) as srv:
        yield srv


@pytest.fixture
def admin(dserver: Server) -> Iterator[AxmeClient]:
    with dserver.client() as c:
        yield c


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def unique_address(name: str) -> str:
    return f"agent://acme/prod/{name}-{uuid.uuid4().hex[:8]}"


def path_part(address: str) -> str:
    return address.removeprefix("agent://")


def http(server: Server, method: str, path: str, *, key: str | None = None, body: Any = None,
         params: dict[str, str] | None = None, timeout: float = 30) -> httpx.Response:
    return httpx.request(
        method,
        f"{server.base_url}{path}",
        json=body,
        params=params,
        headers={"x-api-key": key or server.admin_key},
        timeout=timeout,
    )


def ok_json(resp: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text}"
    body = resp.json()
    assert body.get("ok") is True, body
    return body


def error_json(resp: httpx.Response, status: int) -> dict[str, Any]:
    """The API's error shape with `status`; returns the `error` object."""
    assert resp.status_code == status, f"{resp.request.method} {resp.request.url}: expected {status}, got {resp.status_code} {resp.text}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert body["ok"] is False, body
    err = body["error"]
    assert isinstance(err["code"], str) and err["code"], body
    assert isinstance(err["message"], str) and err["message"], body
    assert isinstance(err["retryable"], bool), body
    return err


def set_binding(server: Server, address: str, binding: dict[str, Any]) -> dict[str, Any]:
    """`PUT /v1/agents/{address}/binding` (admin), asserting success."""
    resp = http(server, "PUT", f"/v1/agents/{path_part(address)}/binding", body=binding)
    return ok_json(resp)


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Polls `check` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def events_of(client: AxmeClient, intent_id: str) -> list[dict[str, Any]]:
    events = client.list_intent_events(intent_id)["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), events
    assert all(e["intent_id"] == intent_id for e in events), events
    return events


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["event_type"] for e in events]


def contains_value(tree: Any, value: Any) -> bool:
    """Whether `value` occurs anywhere in a JSON tree (as a value)."""
    if tree == value:
        return True
    if isinstance(tree, dict):
        return any(contains_value(v, value) for v in tree.values())
    if isinstance(tree, list):
        return any(contains_value(v, value) for v in tree)
    return False


# --------------------------------------------------------------------------------------------
# A real HTTP receiver that checks every request's Standard Webhooks signature.


@dataclass
class Received:
    n: int
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    # The verified JSON payload, or None when verification failed (see `error`).
    payload: Any = None
    error: str | None = None


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """A threaded http.server on 127.0.0.1 whose answers come from `respond(request)`.

    Every request is verified with `standardwebhooks.Webhook(secret).verify` BEFORE the
    answer is chosen; failures are recorded (and answered 400, as a real receiver would) and
    `assert_all_verified` fails the test with the evidence.
    """

    def __init__(self, secret: str, respond: Callable[[Received], Answer],
                 tls: ssl.SSLContext | None = None) -> None:
        self.secret = secret
        self.scheme = "https" if tls else "http"
        self.respond = respond
        self.requests: list[Received] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self._read_body()
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.cond:
                    rec = Received(len(receiver.requests) + 1, self.path, headers, body, time.time())
                    try:
                        rec.payload = Webhook(receiver.secret).verify(body, headers)
                    except (WebhookVerificationError, ValueError, KeyError) as exc:
                        rec.error = f"{type(exc).__name__}: {exc}"
                    receiver.requests.append(rec)
                    receiver.cond.notify_all()
                # Answered outside the lock, so concurrent requests really are concurrent.
                answer = Answer(400, {"error": "bad signature"}) if rec.error else receiver.respond(rec)
                data = b"" if answer.body is None else json.dumps(answer.body).encode()
                self.send_response(answer.status)
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                if answer.body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def snapshot(self) -> list[Received]:
        with self.cond:
            return list(self.requests)

    def wait(self, what: str, pred: Callable[[list[Received]], bool], timeout: float) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.requests):
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"receiver: timed out after {timeout}s waiting for {what}; got {self.describe()}")
                self.cond.wait(left)
            return list(self.requests)

    def describe(self) -> str:
        return json.dumps(
            [{"n": r.n, "webhook-id": r.headers.get("webhook-id"), "error": r.error,
              "body": r.body[:300].decode(errors="replace")} for r in self.requests],
            indent=1,
        )

    def assert_all_verified(self) -> None:
        bad = [r for r in self.snapshot() if r.error is not None]
        assert not bad, f"pushes that fail Standard Webhooks verification: {self.describe()}"


@pytest.fixture
def receivers() -> Iterator[Callable[[str, Callable[[Received], Answer]], Receiver]]:
    made: list[Receiver] = []

    def make(secret: str, respond: Callable[[Received], Answer],
             tls: ssl.SSLContext | None = None) -> Receiver:
        r = Receiver(secret, respond, tls)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_receiver_rejects_a_wrong_signature(receivers: Any) -> None:
    """The harness itself: a push signed with another secret is recorded as unverified, so
    the other tests' `assert_all_verified` can fail."""
    secret, other = new_secret(), new_secret()
    rx = receivers(secret, lambda r: Answer(204))
    body = json.dumps({"hello": "world"})
    ts = datetime.now(tz=timezone.utc)
    good = Webhook(secret).sign("msg_1", ts, body)
    bad = Webhook(other).sign("msg_2", ts, body)
    for msg_id, sig in (("msg_1", good), ("msg_2", bad)):
        httpx.post(rx.url, content=body, timeout=10, headers={
            "webhook-id": msg_id, "webhook-timestamp": str(int(ts.timestamp())), "webhook-signature": sig,
            "content-type": "application/json"})
    got = rx.snapshot()
    assert [r.error is None for r in got] == [True, False], rx.describe()


# --------------------------------------------------------------------------------------------
# stream binding


def test_stream_lease_expiry_redelivers_to_the_next_consumer(dserver: Server, admin: AxmeClient) -> None:
    address = unique_address("stream-worker")
    agent_key = dserver.create_key("stream-worker", "agent", address)
    set_binding(dserver, address, {"delivery_mode": "stream", "ack_timeout_seconds": 1})
    intent_id = admin.send_intent(payment_intent(to_agent=address, amount_cents=990))

    # Consumer 1 takes the delivery and dies without resuming: its stream is closed.
    with dserver.client(agent_key) as agent:
        listening = agent.listen(address, wait_seconds=2, timeout_seconds=30)
        first = None
        for d in listening:
            if d["intent_id"] == intent_id:
                first = d
                break
        listening.close()
    assert first is not None
    assert first["status"] == "DELIVERED", first
    assert first["delivery_attempt"] == 1, first
    cursor = first["seq"]

    # Consumer 2 resumes from the cursor consumer 1 saw: after the 1 s lease runs out it is
    # offered the same intent again, as attempt 2.
    started = time.monotonic()
    with dserver.client(agent_key) as agent2:
        second = None
        for d in agent2.listen(address, since=cursor, wait_seconds=2, timeout_seconds=30):
            if d["intent_id"] == intent_id:
                second = d
                break
        redelivered_after = time.monotonic() - started
        assert second is not None
        assert second["status"] == "DELIVERED", second
        assert second["delivery_attempt"] == 2, second
        assert second["seq"] > cursor, (cursor, second)

        # An ack naming the expired attempt is stale: 409, nothing changes.
        stale = http(dserver, "POST", f"/v1/intents/{intent_id}/ack", key=agent_key, body={"delivery_attempt": 1})
        error_json(stale, 409)
        assert admin.get_intent(intent_id)["intent"]["status"] == "DELIVERED"
        acked = ok_json(http(dserver, "POST", f"/v1/intents/{intent_id}/ack", key=agent_key,
                             body={"delivery_attempt": 2}))
        assert acked["intent"]["status"] == "ACKNOWLEDGED", acked
        agent2.resume_intent(intent_id, {"charge_id": "ch_stream"})

    final = admin.wait_for(intent_id, wait_seconds=2, timeout_seconds=30)
    assert final["status"] == "COMPLETED", final
    intent = admin.get_intent(intent_id)["intent"]
    assert intent["delivery_attempt"] == 2, intent
    assert intent["result"] == {"charge_id": "ch_stream"}, intent
    types = types_of(events_of(admin, intent_id))
    assert types.count("intent.delivered") == 2, types
    assert "intent.lease_expired" in types, types
    first_delivery = types.index("intent.delivered")
    assert first_delivery < types.index("intent.lease_expired") < len(types) - 1 - types[::-1].index("intent.delivered"), types
    assert redelivered_after < 20, f"redelivery took {redelivered_after:.1f}s with a 1 s lease"


# --------------------------------------------------------------------------------------------
# poll binding


def test_poll_receive_leases_deliveries_and_resume_completes_them(dserver: Server, admin: AxmeClient) -> None:
    address = unique_address("poller")
    agent_key = dserver.create_key("poller", "agent", address)
    set_binding(dserver, address, {"delivery_mode": "poll", "ack_timeout_seconds": 30})
    receive = f"/v1/agents/{path_part(address)}/intents/receive"

    ids = {admin.send_intent(payment_intent(to_agent=address, amount_cents=100 + i)) for i in range(3)}
    got = ok_json(http(dserver, "POST", receive, key=agent_key, body={"max": 10, "wait_seconds": 5}))
    deliveries = got["deliveries"]
    assert {d["intent_id"] for d in deliveries} == ids, deliveries
    for d in deliveries:
        assert d["status"] == "DELIVERED", d
        assert d["delivery_attempt"] == 1, d
        assert d["to_agent"] in (address, path_part(address)), d
        assert d["intent_type"] == "payment.charge.v1", d
        assert isinstance(d["payload"], dict), d
        assert admin.get_intent(d["intent_id"])["intent"]["status"] == "DELIVERED"

    # They are leased: nobody else gets them.
    again = ok_json(http(dserver, "POST", receive, key=agent_key, body={"max": 10, "wait_seconds": 0}))
    assert again["deliveries"] == [], again

    # Long poll: a receive waiting on an empty queue returns as soon as an intent arrives.
    result: dict[str, Any] = {}

    def long_poll() -> None:
        t0 = time.monotonic()
        result["resp"] = http(dserver, "POST", receive, key=agent_key, body={"max": 5, "wait_seconds": 20}, timeout=60)
        result["took"] = time.monotonic() - t0

    poller = threading.Thread(target=long_poll)
    poller.start()
    late = admin.send_intent(payment_intent(to_agent=address, amount_cents=7))
    poller.join(timeout=60)
    assert not poller.is_alive(), "long-poll receive never returned"
    late_got = ok_json(result["resp"])
    assert [d["intent_id"] for d in late_got["deliveries"]] == [late], late_got
    assert result["took"] < 15, f"long poll returned after {result['took']:.1f}s, not when the intent arrived"

    # Bounds of the request: max 1..100, wait_seconds 0..60.
    for bad in ({"max": 0, "wait_seconds": 0}, {"max": 101, "wait_seconds": 0}, {"max": 1, "wait_seconds": 61}):
        error_json(http(dserver, "POST", receive, key=agent_key, body=bad), 422)

    with dserver.client(agent_key) as agent:
        for intent_id in ids | {late}:
            agent.resume_intent(intent_id, {"handled": intent_id[:8]})
    for intent_id in ids | {late}:
        final = admin.wait_for(intent_id, wait_seconds=2, timeout_seconds=30)
        assert final["status"] == "COMPLETED", final
        intent = admin.get_intent(intent_id)["intent"]
        assert intent["delivery_attempt"] == 1, intent
        assert intent["result"] == {"handled": intent_id[:8]}, intent


def test_delayed_delivery_is_released_at_deliver_at(dserver: Server, admin: AxmeClient) -> None:
    """deliver_at (our create extension): not offered before it, offered after it (Release)."""
    address = unique_address("delayed")
    agent_key = dserver.create_key("delayed", "agent", address)
    set_binding(dserver, address, {"delivery_mode": "poll"})
    receive = f"/v1/agents/{path_part(address)}/intents/receive"
    deliver_at = datetime.now(tz=timezone.utc) + timedelta(seconds=3)
    body = payment_intent(to_agent=address)
    body["correlation_id"] = str(uuid.uuid4())
    body["deliver_at"] = deliver_at.isoformat().replace("+00:00", "Z")
    intent_id = ok_json(http(dserver, "POST", "/v1/intents", body=body))["intent_id"]
    early = ok_json(http(dserver, "POST", receive, key=agent_key, body={"max": 5, "wait_seconds": 0}))
    assert early["deliveries"] == [], early
    got = ok_json(http(dserver, "POST", receive, key=agent_key, body={"max": 5, "wait_seconds": 30}, timeout=60))
    assert [d["intent_id"] for d in got["deliveries"]] == [intent_id], got
    assert datetime.now(tz=timezone.utc) >= deliver_at - timedelta(milliseconds=1)
    assert got["deliveries"][0]["delivery_attempt"] == 1, got


# --------------------------------------------------------------------------------------------
# http binding


def check_pushes(rx: Receiver, intent_id: str, attempts: int) -> list[Received]:
    """The receiver got exactly `attempts` pushes for `intent_id`, each verified, with
    `webhook-id` = `<intent_id>:<attempt>` and the body's delivery_attempt matching."""
    rx.assert_all_verified()
    mine = [r for r in rx.snapshot() if r.payload and r.payload.get("intent_id") == intent_id]
    assert [r.headers.get("webhook-id") for r in mine] == [f"{intent_id}:{n}" for n in range(1, attempts + 1)], rx.describe()
    for n, r in enumerate(mine, start=1):
        assert r.payload["delivery_attempt"] == n, r.payload
        assert r.headers.get("content-type", "").startswith("application/json"), r.headers
        assert abs(int(r.headers["webhook-timestamp"]) - r.at) < 60, r.headers
        assert r.headers["webhook-signature"].startswith("v1,"), r.headers
    return mine


def test_http_push_retries_with_signed_requests_until_the_receiver_succeeds(
    dserver: Server, admin: AxmeClient, receivers: Any
) -> None:
    address = unique_address("http-worker")
    secret = new_secret()

    def respond(r: Received) -> Answer:
        if r.n <= 2:
            return Answer(500, {"error": "try again"})
        return Answer(200, {"status": "COMPLETED", "result": {"charged": True, "n": r.n}})

    rx = receivers(secret, respond)
    bound = set_binding(dserver, address, {
        "delivery_mode": "http", "url": rx.url, "secret": secret, "max_concurrency": 2,
        "max_delivery_attempts": 5,
    })
    # The secret is never shown; its hint is.
    assert secret not in json.dumps(bound), bound
    assert contains_value(bound, secret[-4:]), bound
    shown = http(dserver, "GET", f"/v1/agents/{path_part(address)}")
    assert secret not in shown.text, shown.text

    intent_id = admin.send_intent(payment_intent(to_agent=address, amount_cents=4321))
    final = admin.wait_for(intent_id, wait_seconds=2, timeout_seconds=60)
    assert final["status"] == "COMPLETED", final
    intent = admin.get_intent(intent_id)["intent"]
    assert intent["delivery_attempt"] == 3, intent
    assert intent["result"] == {"charged": True, "n": 3}, intent
    pushes = check_pushes(rx, intent_id, 3)
    assert pushes[0].payload["payload"] == {"amount_cents": 4321, "currency": "EUR",
                                            "order_id": intent["payload"]["order_id"]}, pushes[0].payload
    types = types_of(events_of(admin, intent_id))
    assert types.count("intent.delivered") == 3, types
    assert types[-1] == "intent.completed", types
    # The two failures are on record, each with the receiver's status in its error.
    failures = [e for e in events_of(admin, intent_id) if isinstance(e.get("details"), dict) and "error" in e["details"]]
    assert len(failures) == 2, events_of(admin, intent_id)
    assert all("500" in str(e["details"]["error"]) for e in failures), failures


def test_http_push_plain_2xx_acknowledges(dserver: Server, admin: AxmeClient, receivers: Any) -> None:
    address = unique_address("http-acker")
    secret = new_secret()
    rx = receivers(secret, lambda r: Answer(204))
    set_binding(dserver, address, {"delivery_mode": "http", "url": rx.url, "secret": secret})
    intent_id = admin.send_intent(payment_intent(to_agent=address))
    wait_until("ACKNOWLEDGED", lambda: admin.get_intent(intent_id)["intent"]["status"] == "ACKNOWLEDGED", 30)
    check_pushes(rx, intent_id, 1)
    intent = admin.get_intent(intent_id)["intent"]
    assert intent["delivery_attempt"] == 1, intent
    # The receiver finishes later through the API, as the contract allows.
    admin.resume_intent(intent_id, {"done": True})
    assert admin.wait_for(intent_id, wait_seconds=2, timeout_seconds=30)["status"] == "COMPLETED"


@pytest.fixture
def private_ca(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A private CA (trustme) with a certificate for 127.0.0.1: the receiver's TLS context and
    the CA's PEM file."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    pem = tmp_path / "receivers-ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return ctx, pem


def test_http_push_over_https_trusts_the_configured_private_ca(
    tmp_path: Path, receivers: Any, private_ca: tuple[ssl.SSLContext, Path]
) -> None:
    ctx, pem = private_ca
    with run_intentd(tmp_path, [*DELIVERY_ARGS, "--delivery-ca-file", str(pem)]) as srv, \
            srv.client() as admin:
        address = unique_address("https-worker")
        secret = new_secret()
        rx = receivers(secret, lambda r: Answer(200, {"status": "COMPLETED", "result": {"tls": True}}), ctx)
        assert rx.url.startswith("https://"), rx.url
        set_binding(srv, address, {"delivery_mode": "http", "url": rx.url, "secret": secret})
        intent_id = admin.send_intent(payment_intent(to_agent=address))
        final = admin.wait_for(intent_id, wait_seconds=2, timeout_seconds=60)
        assert final["status"] == "COMPLETED", final
        assert admin.get_intent(intent_id)["intent"]["result"] == {"tls": True}
        check_pushes(rx, intent_id, 1)


def test_http_push_over_https_refuses_a_certificate_nobody_vouches_for(
    dserver: Server, admin: AxmeClient, receivers: Any, private_ca: tuple[ssl.SSLContext, Path]
) -> None:
    ctx, _ = private_ca
    address = unique_address("https-untrusted")
    secret = new_secret()
    rx = receivers(secret, lambda r: Answer(200), ctx)
    set_binding(dserver, address, {"delivery_mode": "http", "url": rx.url, "secret": secret,
                                   "max_delivery_attempts": 2})
    intent_id = admin.send_intent(payment_intent(to_agent=address))
    final = admin.wait_for(intent_id, wait_seconds=2, timeout_seconds=60)
    assert final["status"] == "FAILED", final
    assert rx.snapshot() == [], "the receiver must never see a request over an untrusted TLS link"
    errors = [str(e["details"]["error"]) for e in events_of(admin, intent_id)
              if isinstance(e.get("details"), dict) and "error" in e["details"]]
    assert errors and all("certificate" in e.lower() for e in errors), errors


def dead_letters(server: Server) -> list[dict[str, Any]]:
    body = ok_json(http(server, "GET", "/v1/deliveries", params={"status": "dead_lettered"}))
    items = body["deliveries"]
    assert isinstance(items, list), body
    return items


def test_http_dead_letter_after_max_attempts_then_replay(dserver: Server, admin: AxmeClient, receivers: Any) -> None:
    address = unique_address("http-broken")
    secret = new_secret()
    healthy = threading.Event()

    def respond(r: Received) -> Answer:
        if healthy.is_set():
            return Answer(200, {"status": "COMPLETED", "result": {"replayed": True}})
        return Answer(503, {"error": "down"})

    rx = receivers(secret, respond)
    set_binding(dserver, address, {"delivery_mode": "http", "url": rx.url, "secret": secret})
    body = payment_intent(to_agent=address, amount_cents=5150)
    body["max_delivery_attempts"] = 3
    intent_id = admin.send_intent(body)
    assert admin.get_intent(intent_id)["intent"]["max_delivery_attempts"] == 3

    final = admin.wait_for(intent_id, wait_seconds=2, timeout_seconds=60)
    assert final["status"] == "FAILED", final
    intent = admin.get_intent(intent_id)["intent"]
    assert intent["error"]["code"] == "delivery_failed", intent
    assert intent["delivery_attempt"] == 3, intent
    check_pushes(rx, intent_id, 3)

    listed = [d for d in dead_letters(dserver) if d.get("intent_id") == intent_id]
    assert len(listed) == 1, dead_letters(dserver)
    assert listed[0]["status"] == "dead_lettered", listed
    assert listed[0]["dead_letter"]["replayed_as"] is None, listed
    inspected = ok_json(http(dserver, "GET", f"/v1/deliveries/{intent_id}"))["delivery"]
    assert inspected["status"] == "dead_lettered", inspected
    assert inspected["dead_letter"]["intent_id"] == intent_id, inspected
    assert inspected["delivery_attempt"] == 3 and inspected["max_delivery_attempts"] == 3, inspected
    assert [a["event_type"] for a in inspected["attempts"]].count("intent.delivered") == 3, inspected
    assert "503" in (inspected["last_error"] or ""), inspected

    healthy.set()
    replayed = ok_json(http(dserver, "POST", f"/v1/deliveries/{intent_id}/replay", body={}))
    new_id = replayed["intent_id"]
    uuid.UUID(new_id)
    assert new_id != intent_id, replayed
    assert replayed["replayed_from"] == intent_id, replayed
    done = admin.wait_for(new_id, wait_seconds=2, timeout_seconds=60)
    assert done["status"] == "COMPLETED", done
    new_intent = admin.get_intent(new_id)["intent"]
    assert new_intent["payload"] == body["payload"], new_intent
    assert new_intent["to_agent"] == intent["to_agent"], new_intent
    assert new_intent["intent_type"] == intent["intent_type"], new_intent
    assert new_intent["delivery_attempt"] == 1, new_intent
    assert new_intent["result"] == {"replayed": True}, new_intent
    check_pushes(rx, new_id, 1)
    # The dead letter stays FAILED (terminal never changes), nothing more was pushed for it.
    assert admin.get_intent(intent_id)["intent"]["status"] == "FAILED"
    check_pushes(rx, intent_id, 3)
    # The dead letter says where it went.
    after = [d for d in dead_letters(dserver) if d.get("intent_id") == intent_id]
    assert [d["dead_letter"]["replayed_as"] for d in after] == [new_id], after


def test_binding_max_delivery_attempts_applies_to_new_intents(dserver: Server, admin: AxmeClient,
                                                             receivers: Any) -> None:
    """The binding's max_delivery_attempts overrides the server default (5) for new intents
    (AgentConfig.max_delivery_attempts in docs/delivery-design.md)."""
    address = unique_address("http-limited")
    secret = new_secret()
    rx = receivers(secret, lambda r: Answer(500, {"error": "down"}))
    bound = set_binding(dserver, address, {"delivery_mode": "http", "url": rx.url, "secret": secret,
                                           "max_delivery_attempts": 2})
    assert contains_value(bound, 2), bound
    intent_id = admin.send_intent(payment_intent(to_agent=address))
    final = admin.wait_for(intent_id, wait_seconds=2, timeout_seconds=60)
    assert final["status"] == "FAILED", final
    intent = admin.get_intent(intent_id)["intent"]
    pushes = [r.headers.get("webhook-id") for r in rx.snapshot()]
    assert (intent["max_delivery_attempts"], intent["delivery_attempt"], len(pushes)) == (2, 2, 2), (intent, pushes)


def test_http_push_respects_the_endpoint_concurrency_cap(dserver: Server, admin: AxmeClient,
                                                        receivers: Any) -> None:
    """max_concurrency 2: a slow receiver never has more than two pushes in flight."""
    address = unique_address("http-slow")
    secret = new_secret()
    state = {"in_flight": 0, "max": 0}
    lock = threading.Lock()

    def respond(r: Received) -> Answer:
        with lock:
            state["in_flight"] += 1
            state["max"] = max(state["max"], state["in_flight"])
        time.sleep(0.3)  # the receiver is slow; this is its behaviour, not a test wait
        with lock:
            state["in_flight"] -= 1
        return Answer(200, {"status": "COMPLETED", "result": {"n": r.n}})

    rx = receivers(secret, respond)
    set_binding(dserver, address, {"delivery_mode": "http", "url": rx.url, "secret": secret,
                                   "max_concurrency": 2})
    ids = [admin.send_intent(payment_intent(to_agent=address, amount_cents=i + 1)) for i in range(6)]
    for intent_id in ids:
        assert admin.wait_for(intent_id, wait_seconds=2, timeout_seconds=60)["status"] == "COMPLETED"
    rx.assert_all_verified()
    assert len(rx.snapshot()) == 6, rx.describe()
    assert state["max"] <= 2, f"{state['max']} pushes in flight at once with max_concurrency 2"


def metric_value(server: Server, name: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    assert seen, f"no {name} in /metrics:\n{text}"
    return total


@pytest.mark.timeout(200)
def test_recovering_receiver_gets_one_probe_not_a_stampede(dserver: Server, admin: AxmeClient,
                                                            receivers: Any) -> None:
    """After 5 consecutive failures the endpoint's breaker opens; once the receiver is back,
    the first push after the cool-down is a lone probe, and the rest follow only after it
    succeeded."""
    address = unique_address("http-flaky")
    secret = new_secret()
    healthy = threading.Event()
    lock = threading.Lock()
    log: list[tuple[str, int, float]] = []  # (what, request n, time)

    def respond(r: Received) -> Answer:
        if not healthy.is_set():
            return Answer(500, {"error": "down"})
        with lock:
            log.append(("arrived", r.n, time.monotonic()))
        time.sleep(0.5)  # a slow but healthy receiver
        with lock:
            log.append(("answered", r.n, time.monotonic()))
        return Answer(200, {"status": "COMPLETED", "result": {}})

    rx = receivers(secret, respond)
    set_binding(dserver, address, {"delivery_mode": "http", "url": rx.url, "secret": secret,
                                   "max_concurrency": 4})
    ids = []
    for i in range(6):
        body = payment_intent(to_agent=address, amount_cents=i + 1)
        body["max_delivery_attempts"] = 50
        ids.append(admin.send_intent(body))
    wait_until("the breaker to hold pushes back",
               lambda: metric_value(dserver, "intentd_breaker_rejections_total") >= 1, 60, interval=0.1)
    failures_before = len(rx.snapshot())
    assert failures_before >= 5, rx.describe()
    healthy.set()
    for intent_id in ids:
        assert admin.wait_for(intent_id, wait_seconds=2, timeout_seconds=90)["status"] == "COMPLETED"
    rx.assert_all_verified()
    with lock:
        events = list(log)
    arrivals = [e for e in events if e[0] == "arrived"]
    probe = arrivals[0]
    probe_answered = next(t for what, n, t in events if what == "answered" and n == probe[1])
    others = arrivals[1:]
    assert others, events
    assert all(t >= probe_answered for _, _, t in others), (
        f"pushes arrived while the probe (request {probe[1]}) was in flight: {events}")


def test_http_binding_refuses_private_targets(dserver: Server) -> None:
    """SSRF: only the allow-listed 127.0.0.1 may be a loopback/private target."""
    for url in ("http://169.254.169.254/latest/meta-data", "http://10.1.2.3/hook", "http://[::1]:9/hook",
                "ftp://127.0.0.1/hook"):
        resp = http(dserver, "PUT", f"/v1/agents/acme/prod/ssrf/binding",
                    body={"delivery_mode": "http", "url": url, "secret": new_secret()})
        error_json(resp, 422)


# --------------------------------------------------------------------------------------------
# inbox: human task, reminders, escalation, approval


def test_inbox_reminders_escalation_and_approval(dserver: Server, admin: AxmeClient) -> None:
    human = unique_address("alice")
    body = payment_intent(to_agent=human, amount_cents=990000)
    body.update({
        "human_task": {"title": "Approve the charge", "task_type": "approval",
                       "allowed_outcomes": ["approved", "rejected"], "required_comment": True},
        "remind_after_seconds": 1,
        "remind_interval_seconds": 1,
        "max_reminders": 2,
        "escalate_to": MANAGER,
    })
    intent_id = admin.send_intent(body)
    intent = admin.get_intent(intent_id)["intent"]
    assert intent["status"] == "WAITING", intent

    inbox = admin.list_inbox(owner_agent=human)
    validate(inbox, "api.inbox.list.response.v1.json")
    assert [t["thread_id"] for t in inbox["threads"]] == [intent_id], inbox
    assert inbox["threads"][0]["intent_id"] == intent_id

    seen: list[dict[str, Any]] = []
    for ev in admin.observe(intent_id, wait_seconds=2, timeout_seconds=30):
        seen.append(ev)
        assert ev["status"] not in TERMINAL, seen
        if ev["event_type"] == "intent.escalated":
            break
    types = types_of(seen)
    assert types[:2] == ["intent.created", "intent.submitted"], types
    assert "WAITING" in [e["status"] for e in seen], seen
    assert types.count("intent.reminder_sent") == 2, types
    assert types.index("intent.reminder_sent") < types.index("intent.escalated"), types
    reminders = [e for e in seen if e["event_type"] == "intent.reminder_sent"]
    gap = (datetime.fromisoformat(reminders[1]["at"].replace("Z", "+00:00"))
           - datetime.fromisoformat(reminders[0]["at"].replace("Z", "+00:00")))
    assert gap >= timedelta(seconds=0.9), reminders
    assert all(e["status"] == "WAITING" for e in reminders), reminders

    escalated = admin.get_intent(intent_id)["intent"]
    assert escalated["status"] == "WAITING", escalated
    assert contains_value(escalated["pending_with"], MANAGER) or contains_value(
        escalated["pending_with"], path_part(MANAGER)), escalated
    managers = admin.list_inbox(owner_agent=MANAGER)
    validate(managers, "api.inbox.list.response.v1.json")
    assert intent_id in [t["thread_id"] for t in managers["threads"]], managers

    # required_comment: an approval without a comment is refused and changes nothing.
    with pytest.raises(AxmeValidationError) as info:
        admin.approve_inbox_thread(intent_id, {}, owner_agent=MANAGER)
    assert info.value.status_code == 422, info.value.body
    assert admin.get_intent(intent_id)["intent"]["status"] == "WAITING"

    admin.approve_inbox_thread(intent_id, {"comment": "within budget"}, owner_agent=MANAGER)
    final = admin.wait_for(intent_id, wait_seconds=2, timeout_seconds=30)
    assert final["status"] == "COMPLETED", final
    result = admin.get_intent(intent_id)["intent"]["result"]
    assert result["outcome"] == "approved", result
    assert result["comment"] == "within budget", result
    all_types = types_of(events_of(admin, intent_id))
    assert all_types.count("intent.reminder_sent") == 2, all_types
    assert all_types.count("intent.escalated") == 1, all_types
    thread = admin.get_inbox_thread(intent_id, owner_agent=MANAGER)
    validate(thread, "api.inbox.thread.response.v1.json")
    assert thread["thread"]["status"] == "done", thread


def test_inbox_reject_with_outcome_outside_allowed_is_422(dserver: Server, admin: AxmeClient) -> None:
    human = unique_address("bob")
    body = payment_intent(to_agent=human)
    body["human_task"] = {"title": "Check", "allowed_outcomes": ["approved", "rejected"]}
    intent_id = admin.send_intent(body)
    assert admin.get_intent(intent_id)["intent"]["status"] == "WAITING"
    with pytest.raises(AxmeValidationError) as info:
        admin.resume_intent(intent_id, {"outcome": "maybe"})
    assert info.value.status_code == 422, info.value.body
    admin.reject_inbox_thread(intent_id, {"comment": "no"}, owner_agent=human)
    final = admin.wait_for(intent_id, wait_seconds=2, timeout_seconds=30)
    assert final["status"] == "COMPLETED", final
    assert admin.get_intent(intent_id)["intent"]["result"]["outcome"] == "rejected"


# --------------------------------------------------------------------------------------------
# deadline


def test_deadline_times_the_intent_out(dserver: Server, admin: AxmeClient) -> None:
    deadline = datetime.now(tz=timezone.utc) + timedelta(seconds=2)
    body = payment_intent(to_agent=unique_address("nobody-listens"))
    body["deadline_at"] = deadline.isoformat().replace("+00:00", "Z")
    intent_id = admin.send_intent(body)
    final = admin.wait_for(intent_id, wait_seconds=2, timeout_seconds=30)
    assert final["status"] == "TIMED_OUT", final
    assert final["event_type"] == "intent.timed_out", final
    at = datetime.fromisoformat(final["at"].replace("Z", "+00:00"))
    assert at >= deadline - timedelta(milliseconds=1), (at, deadline)
    assert at - deadline < timedelta(seconds=15), (at, deadline)
    assert admin.get_intent(intent_id)["intent"]["status"] == "TIMED_OUT"


# --------------------------------------------------------------------------------------------
# webhooks


def test_webhook_subscription_upsert_list_revoke(dserver: Server, receivers: Any) -> None:
    key = dserver.create_key("hooks-owner", "client")
    secret = new_secret()
    rx = receivers(secret, lambda r: Answer(204))
    with dserver.client(key) as owner:
        created = owner.upsert_webhook_subscription({
            "callback_url": rx.url, "event_types": ["inbox.thread_created"], "secret": secret,
            "description": "e2e"})
        validate(created, "api.webhooks.subscriptions.response.v1.json")
        sub = created["subscription"]
        assert sub["secret_hint"] == secret[-4:], sub
        assert secret not in json.dumps(created)
        assert sub["active"] is True and sub["revoked_at"] is None, sub

        # Upsert is keyed by (owner, callback_url): the same subscription, updated.
        updated = owner.upsert_webhook_subscription({
            "callback_url": rx.url, "event_types": ["inbox.thread_created", "inbox.reply_received"],
            "secret": secret})
        validate(updated, "api.webhooks.subscriptions.response.v1.json")
        assert updated["subscription"]["subscription_id"] == sub["subscription_id"], updated
        assert sorted(updated["subscription"]["event_types"]) == ["inbox.reply_received", "inbox.thread_created"]
        assert updated["subscription"]["created_at"] == sub["created_at"], updated

        listed = owner.list_webhook_subscriptions()
        validate(listed, "api.webhooks.subscriptions.list.response.v1.json")
        assert [s["subscription_id"] for s in listed["subscriptions"]] == [sub["subscription_id"]], listed
        assert secret not in json.dumps(listed)
        assert listed["subscriptions"][0]["secret_hint"] == secret[-4:]

        # SSRF: a private callback is refused at registration.
        with pytest.raises(AxmeValidationError) as info:
            owner.upsert_webhook_subscription({"callback_url": "http://169.254.169.254/hook",
                                               "event_types": ["inbox.thread_created"], "secret": new_secret()})
        assert info.value.status_code == 422

        revoked = owner.delete_webhook_subscription(sub["subscription_id"])
        validate(revoked, "api.webhooks.subscriptions.delete.response.v1.json")
        assert revoked["subscription_id"] == sub["subscription_id"]
        after = owner.list_webhook_subscriptions()["subscriptions"]
        still = [s for s in after if s["subscription_id"] == sub["subscription_id"]]
        assert not still or (still[0]["active"] is False and still[0]["revoked_at"]), after

        # A revoked subscription gets nothing.
        published = owner.publish_webhook_event({"event_type": "inbox.thread_created", "source": "e2e",
                                                 "payload": {"n": 1}})
        assert published["queued_deliveries"] == 0, published
    assert rx.snapshot() == []


def test_webhook_subscription_without_secret_gets_a_generated_one(dserver: Server, receivers: Any) -> None:
    """A subscription that names no secret gets a `whsec_` one, shown once in the upsert's
    answer, and its pushes are signed with it; a secret no push could be signed with is
    refused."""
    key = dserver.create_key("hooks-generated", "client")
    rx = receivers(new_secret(), lambda r: Answer(204))
    with dserver.client(key) as owner:
        created = owner.upsert_webhook_subscription({
            "callback_url": rx.url, "event_types": ["inbox.thread_created"]})
        secret = created["subscription"].get("secret")
        assert isinstance(secret, str) and secret.startswith("whsec_"), created
        assert 24 <= len(base64.b64decode(secret[len("whsec_"):])) <= 64, secret
        assert created["subscription"]["secret_hint"] == secret[-4:], created
        assert secret not in json.dumps(owner.list_webhook_subscriptions())

        rx.secret = secret
        owner.publish_webhook_event({"event_type": "inbox.thread_created", "source": "e2e",
                                     "payload": {"n": 1}})
        rx.wait("the signed push", lambda rs: len(rs) >= 1, 30)
        rx.assert_all_verified()

        for bad in ("whsec_" + base64.b64encode(b"x" * 12).decode(), "whsec_not*base64*at*all!"):
            with pytest.raises(AxmeValidationError) as info:
                owner.upsert_webhook_subscription({"callback_url": "https://integrator.example/h",
                                                   "event_types": ["inbox.thread_created"],
                                                   "secret": bad})
            assert info.value.status_code == 422, bad


def counters_consistent(c: dict[str, Any]) -> None:
    assert c["processed_deliveries"] == c["delivered"] + c["dead_lettered"], c
    assert c["queued_deliveries"] == c["processed_deliveries"] + c["pending"], c


def test_published_event_reaches_signed_receiver_replay_and_counters(dserver: Server, receivers: Any) -> None:
    key = dserver.create_key("events-owner", "client")
    secret = new_secret()
    rx = receivers(secret, lambda r: Answer(200, {"ok": True}))
    marker = uuid.uuid4().hex
    with dserver.client(key) as owner:
        sub = owner.upsert_webhook_subscription({"callback_url": rx.url, "event_types": ["inbox.*"],
                                                 "secret": secret})["subscription"]
        published = owner.publish_webhook_event({"event_type": "inbox.reply_received", "source": "e2e",
                                                 "payload": {"marker": marker}})
        validate(published, "api.webhooks.events.response.v1.json")
        assert published["queued_deliveries"] == 1, published
        counters_consistent(published)
        event_id = published["event_id"]

        first = rx.wait("the event", lambda rs: len(rs) >= 1, 30)
        rx.assert_all_verified()
        assert contains_value(first[0].payload, marker), rx.describe()
        assert contains_value(first[0].payload, event_id) or first[0].headers["webhook-id"].startswith(event_id), rx.describe()

        replayed = owner.replay_webhook_event(event_id)
        validate(replayed, "api.webhooks.events.replay.response.v1.json")
        assert replayed["event_id"] == event_id
        assert replayed["queued_deliveries"] == 1, replayed
        counters_consistent(replayed)
        rx.wait("the replayed event", lambda rs: len(rs) >= 2, 30)
        rx.assert_all_verified()
        assert contains_value(rx.snapshot()[1].payload, marker), rx.describe()
        owner.delete_webhook_subscription(sub["subscription_id"])


@pytest.mark.timeout(200)
def test_webhook_dead_letter_counters(dserver: Server, receivers: Any) -> None:
    key = dserver.create_key("dl-owner", "client")
    good_secret, bad_secret = new_secret(), new_secret()
    good = receivers(good_secret, lambda r: Answer(204))
    broken = receivers(bad_secret, lambda r: Answer(500, {"error": "down"}))
    with dserver.client(key) as owner:
        owner.upsert_webhook_subscription({"callback_url": good.url, "event_types": ["inbox.thread_updated"],
                                           "secret": good_secret})
        owner.upsert_webhook_subscription({"callback_url": broken.url, "event_types": ["inbox.thread_updated"],
                                           "secret": bad_secret})
        event = {"event_type": "inbox.thread_updated", "source": "e2e", "payload": {"k": "v"}}
        idem = "dl-" + uuid.uuid4().hex
        published = owner.publish_webhook_event(event, idempotency_key=idem)
        assert published["queued_deliveries"] == 2, published
        counters_consistent(published)
        good.wait("the good delivery", lambda rs: len(rs) >= 1, 30)
        broken.wait("a first failed attempt", lambda rs: len(rs) >= 1, 30)

        def settled() -> dict[str, Any] | None:
            # Publishing again with the same Idempotency-Key and body answers the same event
            # with its current counters.
            c = owner.publish_webhook_event(event, idempotency_key=idem)
            assert c["event_id"] == published["event_id"], c
            return c if c["pending"] == 0 else None

        c = wait_until("the event's deliveries to settle", settled, 150, interval=0.5)
        validate(c, "api.webhooks.events.response.v1.json")
        counters_consistent(c)
        assert (c["queued_deliveries"], c["processed_deliveries"], c["delivered"], c["dead_lettered"]) == (2, 2, 1, 1), c
        assert len(good.snapshot()) == 1, good.describe()
        good.assert_all_verified()
        broken.assert_all_verified()
        # Every push of the dead-lettered delivery was a distinct attempt of one message.
        assert len({r.headers["webhook-id"] for r in broken.snapshot()}) == 1, broken.describe()


def test_intent_completed_subscription_gets_the_lifecycle_event(dserver: Server, admin: AxmeClient,
                                                                 receivers: Any) -> None:
    key = dserver.create_key("orders", "client")
    secret = new_secret()
    rx = receivers(secret, lambda r: Answer(204))
    with dserver.client(key) as orders:
        orders.upsert_webhook_subscription({"callback_url": rx.url, "event_types": ["intent.completed"],
                                            "secret": secret})
        intent_id = orders.send_intent(payment_intent(to_agent=unique_address("payee")))
        admin.resume_intent(intent_id, {"action": "progress"})
        admin.resolve_intent(intent_id, {"status": "COMPLETED", "result": {"paid": True}})
        got = rx.wait("intent.completed", lambda rs: len(rs) >= 1, 30)
    rx.assert_all_verified()
    # A Standard Webhooks envelope ({type, timestamp, data}) whose data is the event JSON.
    envelope = got[0].payload
    assert envelope["type"] == "intent.completed", envelope
    event = envelope["data"]
    assert event["event_type"] == "intent.completed", envelope
    assert event["intent_id"] == intent_id, envelope
    assert event["status"] == "COMPLETED", envelope
    stored = [e for e in events_of(admin, intent_id) if e["event_type"] == "intent.completed"]
    assert len(stored) == 1 and event["seq"] == stored[0]["seq"], (event, stored)
    # Only the subscribed type: no created/submitted/in_progress pushes.
    assert all(r.payload.get("type") == "intent.completed" for r in rx.snapshot()), rx.describe()
