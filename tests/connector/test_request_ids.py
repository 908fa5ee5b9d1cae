"""Request ids: unique within a process, 32 hex digits like the uuid4 ones they replace."""

from __future__ import annotations

import string

from polaris_sdk.connector.calls import new_request_id


def test_request_ids_are_unique_hex_of_a_uuid_s_length() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and set(i) <= set(string.hexdigits.lower()) for i in ids)
