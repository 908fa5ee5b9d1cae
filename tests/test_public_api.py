"""The names the design documents are exported from polaris_sdk, in one sorted __all__."""

from __future__ import annotations

import polaris_sdk

DOCUMENTED = {
    "SDKContext",
    "Configuration",
    "ProviderAPI",
    "ConsumerAPI",
    "InstanceRegisterRequest",
    "InstanceRegisterResponse",
    "InstanceDeregisterRequest",
    "InstanceHeartbeatRequest",
    "GetAllInstancesRequest",
    "GetInstancesRequest",
    "GetOneInstanceRequest",
    "WatchServiceRequest",
    "ServiceChangeEvent",
    "Instance",
    "ServiceKey",
    "ServiceInstances",
    "PolarisError",
}


def test_documented_names_are_exported() -> None:
    missing = DOCUMENTED - set(polaris_sdk.__all__)
    assert not missing, sorted(missing)


def test_all_is_sorted_unique_and_importable() -> None:
    names = [n for n in polaris_sdk.__all__ if n != "__version__"]
    assert names == sorted(names)
    assert len(set(polaris_sdk.__all__)) == len(polaris_sdk.__all__)
    for name in polaris_sdk.__all__:
        assert hasattr(polaris_sdk, name), name


def test_every_exported_error_derives_from_polaris_error() -> None:
    for name in polaris_sdk.__all__:
        obj = getattr(polaris_sdk, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, polaris_sdk.PolarisError), name


def test_public_classes_are_exported_where_they_are_defined() -> None:
    for name in polaris_sdk.__all__:
        obj = getattr(polaris_sdk, name)
        if isinstance(obj, type):
            assert obj.__module__.startswith("polaris_sdk."), name
