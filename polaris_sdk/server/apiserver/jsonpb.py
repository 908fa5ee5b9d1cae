"""Polaris JSON as a real server reads and writes it: Go's ``jsonpb``, emulated.

In (``AllowUnknownFields``): field names may be the proto names or the JSON
(lowerCamel) names; unknown fields are ignored; ``null`` leaves a field
unset, and a ``null`` map value or list element stands for the type's
default; enums are accepted by name or number; a top-level ``null`` is an
empty message. A body that is not such JSON (bad UTF-8, not an object, a
wrong type, NaN) raises :class:`ParseFailure`.

Out (``EmitDefaults``, ``Indent: " "``): JSON names (explicit ``json_name``
kept, e.g. ``vpc_id``), defaults emitted, unset message fields as ``null``,
wrappers as bare values, enums by name, indented by one space.

Pure functions over the private descriptor pool (:mod:`polaris_sdk.wire`);
thread-safe (the caches only ever gain the same entries).
"""

from __future__ import annotations

import json
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from polaris_sdk import wire

__all__ = ["ParseFailure", "decode_request", "encode_response"]


class ParseFailure(ValueError):
    """A request body that is not the expected message as JSON."""


_WELL_KNOWN_PREFIX: Final = "google.protobuf."
# google.protobuf.Value is the one type for which JSON null is a value.
_NULL_VALUE_TYPES: Final = frozenset({"google.protobuf.Value"})
_fields_cache: dict[str, dict[str, FieldDescriptor]] = {}
_nullable_cache: dict[str, tuple[str, ...]] = {}


def _fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by proto name and by JSON name."""
    fields = _fields_cache.get(descriptor.full_name)
    if fields is None:
        fields = {}
        for field in descriptor.fields:
            fields[field.name] = field
            fields[field.json_name] = field
        _fields_cache[descriptor.full_name] = fields
    return fields


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _default(field: FieldDescriptor) -> Any:
    """The JSON of the default value of ``field``'s type (for a null map value or element)."""
    if field.message_type is not None:
        return {}
    if field.type == FieldDescriptor.TYPE_ENUM:
        return 0
    if field.type == FieldDescriptor.TYPE_BOOL:
        return False
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return ""
    return 0


def _scrub_value(value: Any, field: FieldDescriptor) -> Any:
    """One value of ``field`` (not the repeated container) with nulls resolved."""
    if value is None:
        return _default(field)
    message = field.message_type
    if message is not None and not message.full_name.startswith(_WELL_KNOWN_PREFIX):
        # ParseDict would read a string as an object with no known keys.
        return _scrub(_expect(value, dict), message)
    return value


def _scrub(value: Any, descriptor: Descriptor) -> Any:
    """The JSON object of a ``descriptor`` message the way Go's jsonpb reads it.

    Unknown keys go; a null field is unset; a null map value or list element
    is the default of its type; a message, map or list given as another JSON
    type is a :class:`ParseFailure`. Scalars are left for ``ParseDict`` to
    judge (it raises ParseError for a wrong type).
    """
    if not isinstance(value, dict):
        return value
    fields = _fields(descriptor)
    clean: dict[str, Any] = {}
    for key, item in value.items():
        field = fields.get(key)
        if field is None:
            continue
        message = field.message_type
        if item is None:
            if message is not None and message.full_name in _NULL_VALUE_TYPES:
                clean[key] = item
            continue
        if message is not None and _is_map(field):
            value_field = message.fields_by_name["value"]
            clean[key] = {k: _scrub_value(v, value_field) for k, v in _expect(item, dict).items()}
        elif field.is_repeated:
            clean[key] = [_scrub_value(v, field) for v in _expect(item, list)]
        else:
            clean[key] = _scrub_value(item, field)
    return clean


def _expect(value: Any, kind: type[Any]) -> Any:
    if not isinstance(value, kind):
        raise ParseFailure(
            f"expected a JSON {'object' if kind is dict else 'array'}: {value!r:.40}"
        )
    return value


def _reject_constant(name: str) -> Any:
    raise ParseFailure(f"{name} is not a JSON number")


def decode_request(body: bytes, message_class: Any) -> Any:
    """``body`` (JSON) as a ``message_class`` message; raises :class:`ParseFailure`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ParseFailure(f"not UTF-8: {err}") from None
    if not text.strip():
        raise ParseFailure("empty body")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ParseFailure:
        raise
    except (ValueError, RecursionError) as err:
        raise ParseFailure(f"invalid JSON: {err}") from None
    message = message_class()
    if data is None:
        # jsonpb reads a top-level null as an empty message.
        return message
    if not isinstance(data, dict):
        raise ParseFailure(f"expected a JSON object, not {type(data).__name__}")
    try:
        json_format.ParseDict(
            _scrub(data, message.DESCRIPTOR),
            message,
            ignore_unknown_fields=True,
            descriptor_pool=wire.POOL,
        )
    except Exception as err:
        # ParseError for a wrong type; anything else means the same to a
        # client: its body is not this message.
        raise ParseFailure(str(err)) from None
    return message


def _nullable(descriptor: Descriptor) -> tuple[str, ...]:
    """JSON names of the singular message fields outside a oneof (null when unset)."""
    names = _nullable_cache.get(descriptor.full_name)
    if names is None:
        names = tuple(
            f.json_name
            for f in descriptor.fields
            if f.message_type is not None and not f.is_repeated and f.containing_oneof is None
        )
        _nullable_cache[descriptor.full_name] = names
    return names


def _add_nulls(data: dict[str, Any], descriptor: Descriptor) -> None:
    """Write ``null`` for unset singular messages, as jsonpb's EmitDefaults does."""
    for name in _nullable(descriptor):
        data.setdefault(name, None)
    for field in descriptor.fields:
        message = field.message_type
        if message is None or message.full_name.startswith(_WELL_KNOWN_PREFIX):
            continue
        item = data.get(field.json_name)
        if item is None:
            continue
        if _is_map(field):
            value_type = message.fields_by_name["value"].message_type
            if value_type is not None and not value_type.full_name.startswith(_WELL_KNOWN_PREFIX):
                for entry in item.values():
                    _add_nulls(entry, value_type)
        elif field.is_repeated:
            for entry in item:
                _add_nulls(entry, message)
        else:
            _add_nulls(item, message)


def encode_response(message: Any) -> bytes:
    """``message`` as a real server writes it (see the module doc), UTF-8 JSON."""
    data = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, descriptor_pool=wire.POOL
    )
    _add_nulls(data, message.DESCRIPTOR)
    return json.dumps(data, ensure_ascii=False, indent=" ").encode("utf-8")
