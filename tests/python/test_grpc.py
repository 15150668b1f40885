"""The public gRPC API (proto/intentd/v1/intentd.proto) from Python, with stubs generated
from the proto at test time by grpcio-tools, against the same real server as the SDK suite."""

from __future__ import annotations

import importlib
import json
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import grpc
import pytest

from conftest import PAYMENTS, REPO, Server

PROTO_ROOT = REPO / "proto"
# Bounds every call, streams included: a hung server fails the test instead of hanging it.
DEADLINE_S = 30


@pytest.fixture(scope="session")
def pb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, ModuleType]]:
    """(messages, services) generated from the proto into a temporary directory."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("grpc_stubs")
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_ROOT / "intentd" / "v1" / "intentd.proto"),
    ]
    assert protoc.main(args) == 0, "protoc failed to generate the stubs"
    sys.path.insert(0, str(out))
    try:
        yield (
            importlib.import_module("intentd.v1.intentd_pb2"),
            importlib.import_module("intentd.v1.intentd_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))


@pytest.fixture
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        grpc.channel_ready_future(ch).result(timeout=DEADLINE_S)
        yield ch


def key(api_key: str) -> list[tuple[str, str]]:
    return [("x-api-key", api_key)]


def bearer(api_key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {api_key}")]


def send_request(messages: ModuleType, payload: dict[str, Any]) -> Any:
    import uuid

    return messages.SendIntentRequest(
        intent_type="payment.charge.v1",
        correlation_id=str(uuid.uuid4()),
        to_agent=PAYMENTS,
        payload_json=json.dumps(payload),
    )


def error_code(err: grpc.RpcError) -> str | None:
    return dict(err.trailing_metadata() or ()).get("x-error-code")


def test_send_watch_listen_ack_resume_and_status(
    server: Server, channel: grpc.Channel, pb: tuple[ModuleType, ModuleType]
) -> None:
    messages, services = pb
    agent_key = server.create_key("payments-agent", "agent", PAYMENTS)
    intents = services.IntentServiceStub(channel)
    admin = key(server.admin_key)

    sent = intents.SendIntent(
        send_request(messages, {"amount_cents": 4200, "order_id": 12345678901234567890}),
        metadata=admin,
        timeout=DEADLINE_S,
    )
    assert sent.status == messages.STATUS_SUBMITTED
    intent_id = sent.intent_id

    got = intents.GetIntent(messages.GetIntentRequest(intent_id=intent_id), metadata=admin, timeout=DEADLINE_S)
    assert got.intent.status == messages.STATUS_SUBMITTED
    assert got.intent.to_agent == PAYMENTS
    # JSON text keeps integers beyond 2^53 exact.
    assert json.loads(got.intent.payload_json)["order_id"] == 12345678901234567890

    watch = intents.WatchEvents(
        messages.WatchEventsRequest(intent_id=intent_id, since=0, idle_timeout_seconds=30),
        metadata=admin,
        timeout=DEADLINE_S,
    )
    assert [(e.seq, e.event_type) for e in (next(watch), next(watch))] == [
        (1, "intent.created"),
        (2, "intent.submitted"),
    ]

    listen = intents.Listen(
        messages.ListenRequest(address=PAYMENTS, since=0, idle_timeout_seconds=30),
        metadata=bearer(agent_key),
        timeout=DEADLINE_S,
    )
    delivery = next(listen)
    assert delivery.cursor >= 1
    assert delivery.intent.intent_id == intent_id
    assert delivery.intent.status == messages.STATUS_DELIVERED
    assert delivery.intent.delivery_attempt == 1

    acked = intents.Ack(
        messages.AckRequest(intent_id=intent_id, delivery_attempt=delivery.intent.delivery_attempt),
        metadata=key(agent_key),
        timeout=DEADLINE_S,
    )
    assert acked.intent.status == messages.STATUS_ACKNOWLEDGED
    # Settled first: a listener that goes away gives back the leases it still holds.
    listen.cancel()

    resumed = intents.ResumeIntent(
        messages.ResumeIntentRequest(
            intent_id=intent_id,
            complete=messages.ResumeIntentRequest.Complete(result_json=json.dumps({"charge_id": "ch_1"})),
        ),
        metadata=key(agent_key),
        timeout=DEADLINE_S,
    )
    assert resumed.applied
    assert resumed.intent.status == messages.STATUS_COMPLETED

    rest = list(watch)  # ends by itself right after the terminal event
    assert [e.event_type for e in rest] == [
        "intent.delivered",
        "intent.acknowledged",
        "intent.in_progress",
        "intent.completed",
    ]
    assert [e.seq for e in rest] == [3, 4, 5, 6]
    assert rest[-1].status == messages.STATUS_COMPLETED
    assert json.loads(rest[-1].details_json) == {}

    # The HTTP API, through the official SDK, sees the same intent.
    with server.client() as sdk:
        intent = sdk.get_intent(intent_id)["intent"]
    assert intent["status"] == "COMPLETED"
    assert intent["result"] == {"charge_id": "ch_1"}

    status = services.ClusterServiceStub(channel).Status(messages.StatusRequest(), timeout=DEADLINE_S)
    assert status.role == messages.StatusResponse.ROLE_LEADER
    assert status.node_id == 1
    assert status.leader_id == 1
    assert list(status.members) == [1]


def test_missing_or_unknown_key_is_unauthenticated(
    server: Server, channel: grpc.Channel, pb: tuple[ModuleType, ModuleType]
) -> None:
    messages, services = pb
    intents = services.IntentServiceStub(channel)
    for metadata in ([], key("not-a-key"), bearer("not-a-key")):
        with pytest.raises(grpc.RpcError) as caught:
            intents.SendIntent(send_request(messages, {"amount_cents": 1}), metadata=metadata, timeout=DEADLINE_S)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert error_code(caught.value) == "auth_failed"
    # Streams authenticate before they start, too.
    with pytest.raises(grpc.RpcError) as caught:
        next(intents.Listen(messages.ListenRequest(address=PAYMENTS), timeout=DEADLINE_S))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
