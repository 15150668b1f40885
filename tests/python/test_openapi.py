"""intentd's OpenAPI document (`GET /openapi.json`, derived from the code): what it covers,
how it agrees with the AXME gateway's reference document, and a schemathesis run that
drives every operation from it and checks every answer against it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import SHARED_REFERENCE, Server, check_schema, served_document

METHODS = ("get", "put", "post", "delete", "patch")

# How long schemathesis fuzzes (seconds); the test's own timeout leaves room for start-up.
FUZZ_SECONDS = int(os.environ.get("INTENTD_FUZZ_SECONDS", "90"))

# Operations the fuzzer leaves out, and why:
# - cluster membership changes: a random learner address would be dialled (traffic off this
#   machine), and removing node 1 would leave the one-node cluster without its only voter;
# - registering callback URLs (an HTTP binding, a webhook subscription, a scenario that makes
#   HTTP agents): the SSRF guard lets public host names through by design, and the engine
#   would then resolve and dial whatever the fuzzer invented; only loopback may get test
#   traffic;
# - the SSE streams: each answer is held open up to `wait_seconds`, which spends the budget on
#   waiting; their framing is tested in the SDK suite and their resume cursor by the
#   `Last-Event-ID` fuzz target (crates/fuzz).
FUZZ_EXCLUDED = {
    ("post", "/v1/cluster/learners"),
    ("post", "/v1/cluster/members/{node_id}/promote"),
    ("delete", "/v1/cluster/members/{node_id}"),
    ("put", "/v1/agents/{address}/binding"),
    ("post", "/v1/webhooks/subscriptions"),
    ("post", "/v1/scenarios/apply"),
    ("get", "/v1/intents/{intent_id}/events/stream"),
    ("get", "/v1/agents/{address}/intents/stream"),
    ("get", "/v1/mesh/events/stream"),
    ("get", "/v1/admin/intents/stream"),
    ("get", "/v1/admin/console/stream"),
}


# Where intentd differs from gateway.v1.json on purpose, and why.
DELIBERATE_DIFFERENCES = {
    # The enterprise delivery submission (with org and workspace ids) is out of scope
    # (API.md); intentd's /v1/deliveries lists and replays dead letters.
    "POST /v1/deliveries: the reference has it, intentd does not",
    # The per-call contract, api.inbox.messages.delete.request.v1.json, requires `mode`; the
    # gateway document defaults it. intentd follows the per-call schema.
    "POST /v1/inbox/{}/messages/delete: requires ['mode'], the reference does not",
    # A delegation that names no delegate, or a controls call without a patch, would change
    # nothing but the policy generation; a 422 says so instead of accepting a no-op.
    "POST /v1/inbox/{}/delegate: requires ['delegate_to'], the reference does not",
    "POST /v1/intents/{}/controls: requires ['controls_patch'], the reference does not",
}


def normalized(path: str) -> str:
    """A path with its parameters unnamed: `/v1/intents/{id}` and `/v1/intents/{intent_id}`
    are one route."""
    return re.sub(r"\{[^}]+\}", "{}", path)


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, normalized(path)): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follows `#/components/...` references (and a `oneOf`/`anyOf` of one object and null, as
    3.1 generators spell an optional object) down to an object schema."""
    seen = 0
    while seen < 20:
        seen += 1
        if "$ref" in schema:
            node: Any = doc
            for part in schema["$ref"].lstrip("#/").split("/"):
                node = node[part]
            schema = node
            continue
        for key in ("oneOf", "anyOf", "allOf"):
            options = [s for s in schema.get(key, []) if s.get("type") != "null"]
            if len(options) == 1:
                schema = options[0]
                break
        else:
            return schema
    return schema


def body_schema(doc: dict[str, Any], op: dict[str, Any]) -> dict[str, Any] | None:
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    return resolve(doc, content["schema"]) if content else None


def answer_schema(doc: dict[str, Any], op: dict[str, Any]) -> dict[str, Any] | None:
    ok = op.get("responses", {}).get("200", {}).get("content", {}).get("application/json")
    return resolve(doc, ok["schema"]) if ok and "schema" in ok else None


def required_params(op: dict[str, Any]) -> set[tuple[str, str]]:
    return {(p["in"], p["name"]) for p in op.get("parameters", []) if p.get("required")}


def test_the_document_is_served_without_a_key_and_covers_the_api(server: Server) -> None:
    resp = httpx.get(f"{server.base_url}/openapi.json", timeout=15)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert doc["openapi"] == "3.1.0"
    ops = operations(doc)
    # The families of API.md, and intentd's own routes.
    for method, path in [
        ("get", "/health"),
        ("get", "/v1/capabilities"),
        ("post", "/v1/intents"),
        ("get", "/v1/intents/{}/events/stream"),
        ("post", "/v1/intents/{}/resume"),
        ("get", "/v1/agents/{}/intents/stream"),
        ("put", "/v1/agents/{}/binding"),
        ("post", "/v1/inbox/{}/messages/delete"),
        ("post", "/v1/approvals/{}/decision"),
        ("delete", "/v1/webhooks/subscriptions/{}"),
        ("post", "/v1/scenarios/validate"),
        ("post", "/v1/mesh/agents/{}/kill"),
        ("get", "/v1/deliveries"),
        ("post", "/v1/admin/keys"),
        ("get", "/v1/cluster/status"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    ]:
        assert (method, path) in ops, f"{method.upper()} {path} is not documented"
    for (method, path), op in ops.items():
        error = op["responses"]["422"]["content"]["application/json"]["schema"]
        assert resolve(doc, error)["required"] == ["ok", "error"], (method, path)
    # /health as the document describes it (its `members` once drifted from the server's).
    health = httpx.get(f"{server.base_url}/health", timeout=15)
    check_schema(
        health.json(),
        {"components": doc["components"], **doc["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]},
        "GET /health 200",
    )
    # The error shape the document promises is the one the server sends.
    refused = httpx.get(f"{server.base_url}/v1/intents/not-a-uuid", headers={"x-api-key": "nope"}, timeout=15)
    assert refused.status_code == 401
    check_schema(
        refused.json(),
        {"components": doc["components"], "$ref": "#/components/schemas/ErrorAnswer"},
        "ErrorAnswer",
    )


def test_the_document_agrees_with_the_reference_gateway_document() -> None:
    """For the routes both documents have: the same methods, the same required parameters, no
    body field required that the gateway does not require, every field the gateway requires
    known, and every field the gateway's answer promises present in ours."""
    reference_path = SHARED_REFERENCE / "gateway.v1.json"
    if not reference_path.is_file():
        pytest.skip(f"no reference OpenAPI document at {reference_path} (shared/ is laid beside the repo in CI)")
    reference = json.loads(reference_path.read_text())
    ours = served_document()
    our_ops = operations(ours)
    ref_ops = operations(reference)
    shared_paths = {path for _, path in our_ops} & {path for _, path in ref_ops}
    assert len(shared_paths) >= 20, sorted(shared_paths)
    problems: list[str] = []
    compared = 0
    for (method, path), ref_op in sorted(ref_ops.items()):
        if path not in shared_paths:
            continue
        op = our_ops.get((method, path))
        if op is None:
            problems.append(f"{method.upper()} {path}: the reference has it, intentd does not")
            continue
        compared += 1
        ours_required = {p for p in required_params(op) if p[0] == "path"}
        ref_required = {p for p in required_params(ref_op) if p[0] == "path"}
        if ours_required != ref_required:
            problems.append(f"{method.upper()} {path}: path parameters {ours_required} vs {ref_required}")
        ref_body, our_body = body_schema(reference, ref_op), body_schema(ours, op)
        if ref_body is not None:
            if our_body is None:
                problems.append(f"{method.upper()} {path}: takes no JSON body, the reference does")
            else:
                extra = set(our_body.get("required", [])) - set(ref_body.get("required", []))
                if extra:
                    problems.append(f"{method.upper()} {path}: requires {sorted(extra)}, the reference does not")
                unknown = set(ref_body.get("required", [])) - set(our_body.get("properties", {}))
                if unknown:
                    problems.append(f"{method.upper()} {path}: does not know required {sorted(unknown)}")
        ref_answer, our_answer = answer_schema(reference, ref_op), answer_schema(ours, op)
        if ref_answer is not None and our_answer is not None:
            missing = set(ref_answer.get("required", [])) - set(our_answer.get("properties", {}))
            if missing:
                problems.append(f"{method.upper()} {path}: the answer lacks {sorted(missing)}")
    for (method, path) in our_ops:
        if path in shared_paths and (method, path) not in ref_ops:
            problems.append(f"{method.upper()} {path}: intentd has it, the reference does not")
    assert compared >= 25, compared
    unexpected = [p for p in problems if p not in DELIBERATE_DIFFERENCES]
    assert not unexpected, "\n".join(unexpected)


@pytest.mark.timeout(FUZZ_SECONDS + 240)
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(
    server: Server, tmp_path: Path
) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    if not schemathesis.is_file():
        found = shutil.which("schemathesis")
        assert found, "schemathesis is not installed (tests/python/requirements.txt pins it)"
        schemathesis = Path(found)
    args = [
        str(schemathesis), "run", f"{server.base_url}/openapi.json",
        "--url", server.base_url,
        "-H", f"x-api-key: {server.admin_key}",
        "--checks", ",".join([
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_headers_conformance",
            "response_schema_conformance",
        ]),
        "--phases", "examples,coverage,fuzzing",
        "--max-time", str(FUZZ_SECONDS),
        # One worker: with several, CPython 3.11's compiler (which hypothesis calls to describe
        # strategies) can fail with "AST constructor recursion depth mismatch", a tool crash
        # that says nothing about the server.
        "--workers", "1",
        "--request-timeout", "20",
        "--seed", os.environ.get("INTENTD_FUZZ_SEED", "1203"),
        "--suppress-health-check", "all",
        "--report", "junit",
        "--report-dir", str(tmp_path / "report"),
    ]
    # One filter option of a kind is honoured (a repeated one replaces the last), so the
    # exclusions go as one pattern of operation ids, looked up in the served document.
    doc = served_document()
    excluded_ids = sorted(doc["paths"][path][method]["operationId"] for method, path in FUZZ_EXCLUDED)
    args += ["--exclude-operation-id-regex", "^(" + "|".join(map(re.escape, excluded_ids)) + ")$"]
    run = subprocess.run(
        args,
        # Its cache directory (.schemathesis/) goes there, not into the work tree.
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 180,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
    )
    output = run.stdout + run.stderr
    (tmp_path / "schemathesis.txt").write_text(output)
    # The failures section (each with its curl line to reproduce) comes before the summary.
    shown = output if len(output) < 30_000 else output[:24_000] + "\n[...]\n" + output[-6_000:]
    assert run.returncode == 0, f"schemathesis found problems (exit {run.returncode}):\n{shown}"
    # Exactly the operations above were left out, and every other one was tested.
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    assert selected and tested, output[-3000:]
    assert int(selected[2]) - int(selected[1]) == len(FUZZ_EXCLUDED), selected[0]
    assert int(tested[1]) == int(selected[1]), tested[0]
    assert server.process.poll() is None, "the server died during the run"
    print("\n".join(output.splitlines()[-40:]))
