"""A quick path derived from a marshmallow schema, for input that is plainly valid.

``FastCheck(schema)(data)`` accepts ``data`` only when the schema would accept it
with the same result: every key a declared field, every value of the field's
exact JSON type and passing the field's validators, then the schema's own
``validates``, ``validates_schema`` and ``post_load`` hooks.  Anything else returns ``None`` and
goes through ``schema.load``, which also writes the error message.  The schema
stays the one declaration of the format; this only skips marshmallow's
per-field machinery on the hot path (WebSocket replies, task and worker bodies).

A schema using anything this does not understand (another field type, a
``pre_load`` hook, ``data_key``, hooks that want the original data) is marked
unusable and always goes the slow way.  Tests check the two paths never
disagree, frame by frame and body by body.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import Enum
from typing import Any

from marshmallow import Schema, ValidationError, fields, missing

from operator_server.wire.fields import StrictBoolean, StrictInteger, StrictNumber

# Field type -> the exact JSON types it accepts (bool is never an int here).
_TYPES: dict[type[fields.Field], tuple[type, ...]] = {
    fields.String: (str,),
    StrictInteger: (int,),
    StrictBoolean: (bool,),
    fields.Dict: (dict,),
    fields.Raw: (object,),
}
_DECLINE = object()  # "let the schema decide"
Check = Callable[[Any], Any]


class _Unusable(Exception):
    """The schema uses something the fast path does not mirror."""


def _checker(field: fields.Field) -> Check:
    """A function value -> loaded value, or ``_DECLINE``."""
    if getattr(field, "data_key", None) is not None:
        raise _Unusable(f"data_key on {field!r}")
    validators = list(field.validators)

    def validated(value: Any) -> Any:
        try:
            for check in validators:
                check(value)
        except ValidationError:
            return _DECLINE
        return value

    types = _TYPES.get(type(field))
    if types is not None:
        is_int = types == (int,)

        def plain(value: Any) -> Any:
            if not isinstance(value, types) or (is_int and isinstance(value, bool)):
                return _DECLINE
            return validated(value)

        return plain
    if type(field) is StrictNumber:

        def number(value: Any) -> Any:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return _DECLINE
            if value != value or value in (float("inf"), float("-inf")):
                return _DECLINE  # NaN and infinities: the schema names them
            return validated(float(value))

        return number
    if type(field) is fields.Nested and isinstance(field.nested, type | Schema):
        inner = fast_check(field.schema)
        if not inner.usable or field.many:
            raise _Unusable("nested schema")

        def nested(value: Any) -> Any:
            if not isinstance(value, dict):
                return _DECLINE
            loaded = inner(value)
            return _DECLINE if loaded is None else validated(loaded)

        return nested
    if type(field) is fields.List:
        item = _checker(field.inner)

        def listed(value: Any) -> Any:
            if not isinstance(value, list):
                return _DECLINE
            out = []
            for element in value:
                if element is None:
                    return _DECLINE  # inner fields here never allow None
                loaded = item(element)
                if loaded is _DECLINE:
                    return _DECLINE
                out.append(loaded)
            return validated(out)

        return listed
    if type(field) is fields.Enum and field.by_value is not False:
        members: dict[Any, Enum] = {m.value: m for m in field.enum}

        def enum(value: Any) -> Any:
            if isinstance(value, bool) or not isinstance(value, str | int):
                return _DECLINE
            member = members.get(value)
            return _DECLINE if member is None else validated(member)

        return enum
    raise _Unusable(f"field type {type(field).__name__}")


class FastCheck:
    def __init__(self, schema: Schema) -> None:
        self.usable = True
        self.fields: dict[str, tuple[Check, bool, bool, Any]] = {}
        self._validators: list[Callable[..., Any]] = []
        self._field_validators: list[tuple[str, Callable[..., Any]]] = []
        self._post_loads: list[Callable[..., Any]] = []
        try:
            self._mirror(schema)
        except _Unusable:
            self.usable = False

    def _mirror(self, schema: Schema) -> None:
        hooks = schema._hooks  # marshmallow's registry of decorated methods
        for tag, found in hooks.items():
            if tag not in ("validates", "validates_schema", "post_load") and found:
                raise _Unusable(f"{tag} hook")
            for attr, many, options in found:
                if many or options.get("pass_original") or options.get("pass_collection"):
                    raise _Unusable(f"{tag} hook {attr}")
                method = getattr(schema, attr)
                if tag == "validates":
                    names = options["field_names"]
                    self._field_validators.extend((name, method) for name in names)
                elif tag == "validates_schema":
                    self._validators.append(method)
                else:
                    self._post_loads.append(method)
        for name, field in schema.fields.items():
            if field.dump_only:
                continue  # present in input, it is an error: the schema says so
            self.fields[name] = (
                _checker(field),
                field.required,
                field.allow_none,
                field.load_default,
            )

    def __call__(self, data: Any) -> dict[str, Any] | None:
        if not self.usable or not isinstance(data, dict) or not data.keys() <= self.fields.keys():
            return None
        out: dict[str, Any] = {}
        for name, (check, required, allow_none, default) in self.fields.items():
            if name not in data:
                if required:
                    return None
                if default is not missing:
                    out[name] = default() if callable(default) else default
                continue
            value = data[name]
            if value is None:
                if not allow_none:
                    return None
                out[name] = None
                continue
            loaded = check(value)
            if loaded is _DECLINE:
                return None
            out[name] = loaded
        try:
            # In marshmallow's order: field hooks, then schema hooks.
            for name, validate in self._field_validators:
                if name in out:
                    validate(out[name], data_key=name)
            for validate in self._validators:
                validate(out, partial=None, many=False)
        except ValidationError:
            return None
        result: Any = out
        for post_load in self._post_loads:
            result = post_load(result, partial=None, many=False)
        return result


@functools.cache
def fast_check(schema: Schema) -> FastCheck:
    """The fast path of ``schema`` (built once per schema instance)."""
    return FastCheck(schema)
