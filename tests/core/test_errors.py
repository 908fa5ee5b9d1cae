from __future__ import annotations

import pytest

from polaris_sdk import errors, wire

# Codes of v1.Code that the naming path (register, deregister, heartbeat,
# discover, report client) of a polaris-server can answer with.
NAMING_PATH_CODES = [
    "BadRequest",
    "ParseException",
    "EmptyRequest",
    "BatchSizeOverLimit",
    "InvalidDiscoverResource",
    "InvalidRequestID",
    "InvalidUserToken",
    "InvalidParameter",
    "InvalidNamespaceName",
    "InvalidServiceName",
    "InvalidServiceToken",
    "InvalidServiceMetadata",
    "InvalidInstanceID",
    "InvalidInstanceHost",
    "InvalidInstancePort",
    "InvalidInstanceProtocol",
    "InvalidInstanceVersion",
    "InvalidInstanceLogicSet",
    "InvalidInstanceIsolate",
    "HealthCheckNotOpen",
    "HeartbeatOnDisabledIns",
    "HeartbeatExceedLimit",
    "HeartbeatTypeNotFound",
    "InvalidMetadata",
    "ExistedResource",
    "NotFoundResource",
    "SameInstanceRequest",
    "MaximumCapacityExceeded",
    "NotFoundService",
    "NotFoundInstance",
    "NotFoundNamespace",
    "ClientAPINotOpen",
    "NotAllowAliasCreateInstance",
    "Unauthorized",
    "NotAllowedAccess",
    "EmptyAutToken",
    "TokenDisabled",
    "TokenNotExisted",
    "AuthTokenForbidden",
    "OperationRoleForbidden",
    "APIRateLimit",
    "DataConflict",
    "InstanceTooManyRequests",
    "IPRateLimit",
    "ExecuteException",
    "StoreLayerException",
    "HeartbeatException",
    "InstanceRegisTimeout",
]


@pytest.mark.parametrize("name", NAMING_PATH_CODES)
def test_every_naming_code_has_an_entry(name: str) -> None:
    code = getattr(wire.Code, name)
    assert code in errors.CODE_ERRORS, f"{name} ({code}) is not mapped"


def test_the_table_names_only_real_codes() -> None:
    assert set(errors.CODE_ERRORS) <= set(wire.Code.by_number)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (400120, errors.InvalidParameterError),
        (400202, errors.ResourceNotFoundError),
        (400140, errors.HealthCheckDisabledError),
        (401000, errors.AuthError),
        (500001, errors.ServerInternalError),
    ],
)
def test_error_for_code(code: int, cls: type[errors.ServerError]) -> None:
    err = errors.error_for_code(code, "info")
    assert type(err) is cls
    assert (err.code, err.info) == (code, "info")
    assert isinstance(err, errors.PolarisError)


@pytest.mark.parametrize(
    ("code", "cls", "retriable"),
    [
        (400999, errors.BadRequestError, False),
        (401999, errors.AuthError, False),
        (403999, errors.AuthError, False),
        (500999, errors.ServerInternalError, True),
    ],
)
def test_unknown_codes_fall_back_by_class(
    code: int, cls: type[errors.ServerError], retriable: bool
) -> None:
    err = errors.error_for_code(code)
    assert type(err) is cls
    assert err.retriable is retriable


def test_only_5xx_throttling_and_conflicts_are_retriable() -> None:
    # 400208 SameInstanceRequest: the same instance twice in one server batch window.
    throttled_or_conflict = {400208, 403003, 409000, 429001, 429002}
    for code, cls in errors.CODE_ERRORS.items():
        assert cls.retriable == (code >= 500000 or code in throttled_or_conflict), code


def test_validation_error_names_field_and_rule() -> None:
    err = errors.ValidationError("port", "must be an integer from 0 to 65535", 400132)
    assert str(err) == "port: must be an integer from 0 to 65535"
    assert isinstance(err, ValueError)
    assert isinstance(err, errors.PolarisError)


def test_a_missing_token_says_where_to_set_it() -> None:
    error = errors.error_for_code(401002, "auth token empty")

    assert "POLARIS_TOKEN" in str(error) and "global.serverConnector.token" in str(error)
    assert error.info == "auth token empty"
