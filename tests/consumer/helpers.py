"""Instances and snapshots built in code, for the pure unit tests."""

from __future__ import annotations

from collections.abc import Mapping

from polaris_sdk.model import Instance, ServiceInstances
from polaris_sdk.validation import instance_id


def make_instance(
    port: int,
    *,
    host: str = "127.0.0.1",
    service: str = "echo",
    weight: int = 100,
    healthy: bool = True,
    isolated: bool = False,
    metadata: Mapping[str, str] | None = None,
    revision: str = "r1",
) -> Instance:
    return Instance(
        id=instance_id("default", service, host, port),
        namespace="default",
        service=service,
        host=host,
        port=port,
        weight=weight,
        healthy=healthy,
        isolated=isolated,
        metadata=metadata or {},
        revision=revision,
    )


def make_snapshot(
    *instances: Instance, revision: str = "rev-1", service: str = "echo"
) -> ServiceInstances:
    return ServiceInstances("default", service, revision, instances)
