"""The web console, rendered by a real headless Chromium against a running server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from polaris_sdk import ProviderAPI, SDKContext, wire
from polaris_sdk.server import PolarisServer
from tests.server.browser import Browser, chromium_or_skip
from tests.support import wait_until

ROWS = "[...document.querySelectorAll('#instances tbody tr')]"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    executable = chromium_or_skip()
    started = Browser(executable, tmp_path / "profile")
    try:
        yield started
    finally:
        started.close()


def test_the_page_and_its_assets_are_served(server: PolarisServer) -> None:
    with httpx.Client(base_url=server.http_address, timeout=10) as client:
        page = client.get("/console")
        script = client.get("/console/console.js")

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/console/console.js" in page.text
    assert "/naming/v1/instances" in script.text


def test_the_console_shows_a_new_service_and_an_instance_turning_unhealthy(
    server: PolarisServer, browser: Browser
) -> None:
    # Heartbeats keep it healthy until the context closes without deregistering.
    ctx = SDKContext.create(
        addresses=[server.grpc_address], **{"provider.deregisterOnClose": False}
    )
    with ctx:
        ProviderAPI(ctx).register_instance(
            namespace="default",
            service="console-echo",
            host="10.0.0.7",
            port=8080,
            ttl=1,
            metadata={"env": "test"},
        )
        browser.open(f"{server.http_address}/console?refresh=200")
        wait_until(
            lambda: browser.evaluate(
                "[...document.querySelectorAll('#services tbody tr')]"
                ".some(r => r.dataset.service === 'default/console-echo')"
            ),
            timeout=20,
            message="the console did not list the new service",
        )
        browser.evaluate(
            "[...document.querySelectorAll('#services a')]"
            ".find(a => a.textContent === 'console-echo').click()"
        )
        wait_until(
            lambda: browser.evaluate(f"{ROWS}.some(r => r.dataset.healthy === 'true')"),
            timeout=20,
            message="the console did not show the healthy instance",
        )
        row = browser.evaluate(f"{ROWS}[0].innerText")
        assert "10.0.0.7" in row and "env=test" in row and "healthy" in row

    # No more beats: unhealthy after 3 x TTL; the page notices by itself.
    wait_until(
        lambda: browser.evaluate(f"{ROWS}.some(r => r.dataset.healthy === 'false')"),
        timeout=30,
        message="the console did not show the instance turning unhealthy",
    )
    assert "unhealthy" in browser.evaluate(f"{ROWS}[0].innerText")


def test_a_service_of_ten_thousand_instances_is_shown_a_page_at_a_time(
    server: PolarisServer, browser: Browser
) -> None:
    for n in range(10_000):
        server.naming.register_instance(
            wire.Instance(
                namespace=wire.StringValue(value="default"),
                service=wire.StringValue(value="big"),
                host=wire.StringValue(value=f"10.1.{n // 256}.{n % 256}"),
                port=wire.UInt32Value(value=80),
            )
        )

    browser.open(f"{server.http_address}/console?namespace=default&service=big")
    wait_until(
        lambda: browser.evaluate(f"{ROWS}.length") == 100,
        timeout=20,
        message="the console did not show the first page of instances",
    )
    pager = browser.evaluate("document.getElementById('instances-pager').innerText")
    assert "1-100 of 10000" in pager

    browser.evaluate(
        "[...document.querySelectorAll('#instances-pager button')]"
        ".find(b => b.textContent === 'next').click()"
    )
    wait_until(
        lambda: (
            "101-200 of 10000"
            in browser.evaluate("document.getElementById('instances-pager').innerText")
        ),
        timeout=20,
    )
