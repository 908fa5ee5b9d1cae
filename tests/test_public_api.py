"""The names the design documents are exported from polaris_sdk, in one sorted __all__."""

from __future__ import annotations

import subprocess
import sys

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


def test_importing_the_package_is_cheap_until_a_name_is_used() -> None:
    # pytest loads the polaris_sdk.testing plugin in every run wherever the
    # package is installed, so a bare import must not pull in grpc or the wire pool.
    code = (
        "import sys, polaris_sdk, polaris_sdk.testing.plugin\n"
        "heavy = [m for m in ('grpc', 'polaris_sdk.wire', 'httpx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "polaris_sdk.ProviderAPI\n"
        "assert 'grpc' in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_dir_lists_the_lazy_names() -> None:
    assert set(polaris_sdk.__all__) <= set(dir(polaris_sdk))
