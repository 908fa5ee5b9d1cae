"""The pytest plugin's server puts circuit-breaker rules and forgets them on reset.

Here, not in tests/server: the plugin's server lives for the whole session.
"""

from __future__ import annotations

from typing import Any

from tests.server.test_cbrules import discover, rule


def test_the_pytest_plugin_puts_rules_and_resets_them(polaris_server: Any) -> None:
    [rule_id] = polaris_server.put_circuit_breaker_rules(rule("from-plugin"))
    assert [r.id for r in discover(polaris_server.server, "callee").circuitBreaker.rules] == [
        rule_id
    ]
    polaris_server.reset()
    assert not discover(polaris_server.server, "callee").circuitBreaker.rules
