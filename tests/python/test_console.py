"""The web console at /ui in headless Chromium (Debian's chromium and chromium-driver, driven
over WebDriver by selenium): sign in with the admin key, see an intent appear live, open
its timeline, inspect and replay a dead letter, kill and resume an agent, watch the cluster
view draw its charts. Screenshots of each view go to $INTENTD_TEST_OUTPUT/console (default
<repo>/target/test-output/console).

Every wait is a DOM (or API) condition with a bounded timeout; nothing sleeps to
synchronise. The page's own console log must stay free of errors (a Content-Security-Policy
violation, a failed script) for the test to pass.
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from conftest import PAYMENTS, REPO, Server

ADDRESS = PAYMENTS.removeprefix("agent://")
WAIT_S = 20.0

CHROMIUM = os.environ.get("INTENTD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("INTENTD_CHROMEDRIVER", "/usr/bin/chromedriver")


def output_dir() -> Path:
    base = Path(os.environ.get("INTENTD_TEST_OUTPUT", REPO / "target" / "test-output"))
    out = base / "console"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            pytest.fail(
                f"{path} not found: install Debian's chromium and chromium-driver "
                "(tests/run.sh does), or point INTENTD_CHROMIUM / INTENTD_CHROMEDRIVER at them"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,900",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, what: str, check: Callable[[WebDriver], Any], timeout: float = WAIT_S) -> Any:
    """Waits until `check` answers something truthy; a stale element counts as not yet."""
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
        check, message=f"timed out after {timeout}s waiting for {what}"
    )


def visible(css: str) -> Callable[[WebDriver], Any]:
    def check(d: WebDriver) -> Any:
        found = d.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found and found[0].is_displayed() else None

    return check


def click(driver: WebDriver, what: str, css: str, text: str | None = None) -> None:
    """Clicks the first element matching `css` (with `text`, if given) once it is shown; a
    list re-rendered under the click (a live update) makes it find the element again."""

    def attempt(d: WebDriver) -> bool:
        found = d.find_elements(By.CSS_SELECTOR, css)
        if not found or not found[0].is_displayed() or (text is not None and found[0].text != text):
            return False
        found[0].click()
        return True

    wait_for(driver, what, attempt)


def api_until(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def dead_letter(server: Server, admin: dict[str, str]) -> str:
    """An intent whose only delivery attempt ran out: leased by a poll, never settled."""
    agent_key = server.create_key("payments", "agent", PAYMENTS)
    r = httpx.put(
        f"{server.base_url}/v1/agents/{ADDRESS}/binding",
        json={"delivery_mode": "poll", "ack_timeout_seconds": 1, "max_delivery_attempts": 1},
        headers=admin,
        timeout=15,
    )
    assert r.status_code == 200, r.text
    intent_id = create(server, admin, "invoice.send.v1")
    r = httpx.post(
        f"{server.base_url}/v1/agents/{ADDRESS}/intents/receive",
        json={"max": 1, "wait_seconds": 5},
        headers={"x-api-key": agent_key},
        timeout=20,
    )
    assert r.status_code == 200 and r.json()["deliveries"], r.text

    def dead() -> bool:
        listed = httpx.get(f"{server.base_url}/v1/deliveries?status=dead_lettered", headers=admin, timeout=15)
        return any(d["intent_id"] == intent_id for d in listed.json()["deliveries"])

    api_until("the lease to run out into a dead letter", dead)
    return intent_id


def create(server: Server, admin: dict[str, str], intent_type: str) -> str:
    r = httpx.post(
        f"{server.base_url}/v1/intents",
        json={
            "intent_type": intent_type,
            "correlation_id": str(uuid.uuid4()),
            "to_agent": PAYMENTS,
            "payload": {"amount_cents": 4200},
        },
        headers=admin,
        timeout=15,
    )
    assert r.status_code == 200, r.text
    return r.json()["intent_id"]


def test_console_signs_in_follows_intents_and_steers_the_mesh(server: Server, browser: WebDriver) -> None:
    out = output_dir()
    admin = {"x-api-key": server.admin_key}
    dead_id = dead_letter(server, admin)
    # A heartbeat makes the agent's mesh record (health, last seen) besides its binding.
    agent_key = server.create_key("payments-beat", "agent", PAYMENTS)
    beat = httpx.post(
        f"{server.base_url}/v1/mesh/heartbeat",
        json={"metrics": {"intents_total": 3, "intents_succeeded": 3, "avg_latency_ms": 12.5}},
        headers={"x-api-key": agent_key},
        timeout=15,
    )
    assert beat.status_code == 200, beat.text

    # Sign in: a wrong key is refused in the page, the admin key opens the console.
    browser.get(f"{server.base_url}/ui")
    key_input = wait_for(browser, "the login form", visible("#api-key"))
    key_input.send_keys("not-a-key")
    browser.find_element(By.ID, "login-button").click()
    wait_for(browser, "the refusal", lambda d: "not accepted" in d.find_element(By.ID, "login-error").text)
    browser.save_screenshot(str(out / "01-login.png"))
    key_input.clear()
    key_input.send_keys(server.admin_key)
    browser.find_element(By.ID, "login-button").click()
    wait_for(browser, "the intents view", visible("#view-intents"))
    wait_for(browser, "the live feeds", lambda d: d.find_element(By.ID, "live").text == "live")
    wait_for(browser, "the dead letter's row", visible(f'tr[data-intent-id="{dead_id}"]'))

    # An intent created elsewhere appears without a reload, pushed by the feed.
    intent_id = create(server, admin, "payment.charge.v1")
    wait_for(
        browser, "the new intent's row",
        lambda d: "payment.charge.v1" in d.find_element(By.CSS_SELECTOR, f'tr[data-intent-id="{intent_id}"]').text,
    )
    browser.save_screenshot(str(out / "02-intents.png"))

    # Its timeline: facts and every event, kept live.
    click(browser, "the intent's timeline button", f'tr[data-intent-id="{intent_id}"] button.open-intent')
    wait_for(browser, "the timeline", visible(f'#timeline[data-intent-id="{intent_id}"]'))
    wait_for(browser, "the created event", visible('#timeline-events li[data-event-type="intent.created"]'))
    assert "payment.charge.v1" in browser.find_element(By.ID, "timeline-title").text
    browser.save_screenshot(str(out / "03-timeline.png"))

    # Dead letters: inspect, then replay; the replay is a new intent that shows up live.
    browser.find_element(By.CSS_SELECTOR, 'a[data-view="deliveries"]').click()
    click(browser, "the dead letter's inspect button", f'tr[data-dead-letter="{dead_id}"] button.inspect')
    wait_for(browser, "the delivery detail", lambda d: dead_id[-8:] in d.find_element(By.ID, "delivery-title").text)
    wait_for(browser, "its attempts", visible('#delivery-body li[data-event-type]'))
    click(browser, "the dead letter's replay button", f'tr[data-dead-letter="{dead_id}"] button.replay')
    wait_for(browser, "the replayed mark", visible(f'tr[data-dead-letter="{dead_id}"][data-replayed="yes"]'))
    browser.save_screenshot(str(out / "04-dead-letters.png"))
    detail = httpx.get(f"{server.base_url}/v1/deliveries/{dead_id}", headers=admin, timeout=15).json()
    replayed_as = detail["delivery"]["dead_letter"]["replayed_as"]
    assert replayed_as, detail

    # Agents: kill (asked twice), then resume; the API agrees with the page at each step.
    browser.find_element(By.CSS_SELECTOR, 'a[data-view="agents"]').click()
    agent_row = f'tr[data-agent="{ADDRESS}"]'
    wait_for(browser, "the agent's row", visible(f'{agent_row}[data-health="healthy"]'))
    click(browser, "the kill button", f"{agent_row} button.kill", "Kill")
    click(browser, "the kill confirmation", f"{agent_row} button.kill", "Confirm kill")
    wait_for(browser, "the killed agent", visible(f'{agent_row}[data-health="killed"]'))
    wait_for(browser, "the kill in the mesh events", visible('#mesh-events li[data-event-type="agent.killed"]'))
    agent = httpx.get(f"{server.base_url}/v1/mesh/agents/{ADDRESS}", headers=admin, timeout=15).json()
    assert agent["agent"]["killed"] is True, agent
    browser.save_screenshot(str(out / "05-agents-killed.png"))
    click(browser, "the resume button", f"{agent_row} button.resume")
    wait_for(browser, "the resumed agent", visible(f'{agent_row}[data-health="healthy"]'))
    agent = httpx.get(f"{server.base_url}/v1/mesh/agents/{ADDRESS}", headers=admin, timeout=15).json()
    assert agent["agent"]["killed"] is False, agent

    # Webhooks and the cluster: the status feed fills the facts and, from its second frame
    # on, draws the charts.
    browser.find_element(By.CSS_SELECTOR, 'a[data-view="webhooks"]').click()
    wait_for(browser, "the webhooks view", visible("#subscriptions-table"))
    browser.find_element(By.CSS_SELECTOR, 'a[data-view="cluster"]').click()
    wait_for(browser, "the cluster facts", lambda d: "leader" in d.find_element(By.ID, "cluster-facts").text)
    wait_for(browser, "a membership row", visible('#members-table tr[data-node="1"]'))
    wait_for(
        browser, "a throughput line of two samples",
        lambda d: " " in (d.find_element(By.CSS_SELECTOR, "#chart-throughput polyline").get_attribute("points") or ""),
    )
    browser.save_screenshot(str(out / "06-cluster.png"))

    # Back on the intents view with the replay's new intent listed (it arrived live).
    browser.find_element(By.CSS_SELECTOR, 'a[data-view="intents"]').click()
    wait_for(browser, "the replayed intent", visible(f'tr[data-intent-id="{replayed_as}"]'))

    # Sign out forgets the key.
    browser.find_element(By.ID, "logout").click()
    wait_for(browser, "the login form again", visible("#api-key"))
    assert browser.execute_script("return sessionStorage.getItem('intentd.apiKey')") is None

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "not-a-key" not in e["message"]]
    # The refused sign-in is the one expected 401 in the log.
    errors = [e for e in errors if "401" not in e["message"]]
    assert not errors, errors
