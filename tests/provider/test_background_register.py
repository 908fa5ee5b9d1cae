"""Start-up with the registry down: ``register_instance(background=True)`` keeps trying."""

from __future__ import annotations

import pytest

from polaris_sdk import ProviderAPI
from polaris_sdk.errors import NetworkError
from polaris_sdk.provider.flow import RegistrationState
from polaris_sdk.testing import PolarisTestServer
from tests.support import wait_until


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_registers_once_the_registry_is_up(own_server: PolarisTestServer, protocol: str) -> None:
    service = f"bg-{protocol}"
    own_server.stop()
    settings = {"global.api.timeout": "0.5s", "global.serverConnector.protocol": protocol}
    with ProviderAPI.create(addresses=own_server.addresses(protocol), **settings) as provider:
        with pytest.raises(NetworkError):
            provider.register_instance(service=service, host="127.0.0.1", port=7200, ttl=1)
        resp = provider.register_instance(
            service=service, host="127.0.0.1", port=7200, ttl=1, background=True
        )
        status = provider.status(resp.instance_id)
        assert status is not None and status.state is RegistrationState.REREGISTERING
        assert isinstance(status.last_error, NetworkError)
        assert provider.context.state.value in ("SUSPENDED", "LOST")
        own_server.start()
        # One backoff step (TTL 1 s plus jitter, doubling) after the registry is back.
        own_server.wait_for_instances(service, 1, healthy=True, timeout=10)
        wait_until(
            lambda: provider.status(resp.instance_id).state is RegistrationState.REGISTERED,
            timeout=5,
        )
    assert own_server.instances(service) == []
