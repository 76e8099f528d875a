"""Rebuild an event model from canonical bytes that a verify stage has already validated.

The sequencer receives, over the authenticated verified hop (ledger.intake), the unsigned canonical bytes
of events the verify stage decoded and validated in full. It needs the same `Event` model back for the
append rules, but running pydantic validation a second time costs more than everything else the
sequencer does per event (schema walk, the Python validators of every quantity, time and model).

`event_from_verified_json` builds the model straight from the parsed JSON: each field is converted the
way validation converts it (quantities `Decimal(text)` as `_quantity` does, times parsed and moved to
UTC as `UtcTime` does, kinds as `Kind` members, nested models recursively, defaults for absent fields,
`model_fields_set` = the fields present) and no check is repeated. Any shape it does not know (an
annotation it has no rule for, an unusual time spelling, a value of an unexpected JSON type, an unknown
key) falls back to full validation, which also raises ValidationError for what is invalid. Tests compare
the result with `EVENT_ADAPTER.validate_json` field by field for every kind.

ONLY for bytes whose validation is vouched for (a MAC-checked verified record): it checks nothing.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, PlainValidator, WrapValidator
from pydantic_core import from_json

from schemas.events import EVENT_ADAPTER, MODEL_OF_KIND, Event, Kind, _quantity, _rfc3339, _utc

__all__ = ["event_from_verified_json"]


class _NotPlain(Exception):
    """A shape the rebuild does not handle: validate in full instead."""


Conv = Callable[[Any], Any]
_VALIDATORS = (AfterValidator, BeforeValidator, PlainValidator, WrapValidator)
_MISSING: Any = object()
# the spellings fromisoformat reads exactly as pydantic does (at most microseconds: no truncation)
_PLAIN_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})"
)


def _string(v: Any) -> Any:
    if type(v) is not str:
        raise _NotPlain
    return v


def _decimal(v: Any) -> Decimal:
    t = type(v)
    if t is str or t is int:  # what `_quantity` accepts and returns as Decimal(v)
        return Decimal(v)
    raise _NotPlain


def _time(v: Any) -> datetime:
    if type(v) is not str or not _PLAIN_TIME.fullmatch(v):
        raise _NotPlain
    return datetime.fromisoformat(v).astimezone(UTC)  # UtcTime's after-validator: astimezone(UTC)


def _exact(kind: type) -> Conv:
    def conv(v: Any) -> Any:
        if type(v) is not kind:
            raise _NotPlain
        return v

    return conv


def _optional(inner: Conv) -> Conv:
    return lambda v: None if v is None else inner(v)


def _list_of(inner: Conv) -> Conv:
    def conv(v: Any) -> list[Any]:
        if type(v) is not list:
            raise _NotPlain
        return [inner(x) for x in v]

    return conv


_KINDS: dict[str, Kind] = {k.value: k for k in Kind}


def _kind(v: Any) -> Kind:
    k = _KINDS.get(v) if type(v) is str else None
    if k is None:
        raise _NotPlain
    return k  # Kind(v), without the enum call


def _conv(annotation: Any, metadata: list[Any]) -> Conv:
    """How validation turns the JSON value of a field of this annotation into the model's value."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        base, *meta = get_args(annotation)
        return _conv(base, [*meta, *metadata])
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1 or len(get_args(annotation)) != 2:
            raise _NotPlain
        return _optional(_conv(args[0], metadata))
    if origin is list:
        return _list_of(_conv(get_args(annotation)[0], []))
    if origin is Literal:
        values = get_args(annotation)
        if all(isinstance(x, Kind) for x in values):
            return _kind
        if all(type(x) is str for x in values):
            return _string
        raise _NotPlain
    validators = [m for m in metadata if isinstance(m, _VALIDATORS)]
    funcs = [m.func for m in validators]
    if annotation is Decimal:
        if funcs == [_quantity] and isinstance(validators[0], PlainValidator):
            return _decimal
        raise _NotPlain
    if annotation is datetime:
        if funcs == [_rfc3339, _utc] and [type(m) for m in validators] == [BeforeValidator, AfterValidator]:
            return _time
        raise _NotPlain
    if validators:
        raise _NotPlain  # a validator this module does not know might change the value
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_conv(annotation)
    if annotation is Kind:
        return _kind
    if annotation is str:
        return _string
    if annotation is bool or annotation is int:
        return _exact(annotation)
    raise _NotPlain


class Plan:
    """How to build one model: its defaults in field order, a conversion per field (None: the JSON
    value as is), the required fields and the fields whose default is a fresh empty list."""

    __slots__ = ("convs", "fresh_lists", "required", "template")

    def __init__(self, cls: type[BaseModel]) -> None:
        self.template: dict[str, Any] = {}
        self.convs: dict[str, Conv | None] = {}
        required: set[str] = set()
        fresh: list[str] = []
        for name, info in cls.model_fields.items():
            if info.alias not in (None, name):
                raise _NotPlain
            if info.default_factory is not None and info.default_factory is not list:
                raise _NotPlain  # only `default_factory=list` is known: a fresh empty list per model
            conv = _conv(info.annotation, list(info.metadata))
            self.convs[name] = None if conv is _string else conv  # validated JSON strings stay as they are
            if info.is_required():
                required.add(name)
                self.template[name] = _MISSING
            elif info.default_factory is list:
                fresh.append(name)
                self.template[name] = _MISSING  # always replaced (by the JSON value or a fresh list)
            else:
                value = info.default
                if isinstance(value, list):
                    if value:
                        raise _NotPlain
                    fresh.append(name)  # a fresh empty list per model, as validation makes
                elif not (value is None or isinstance(value, str | int | bool | Decimal | BaseModel)):
                    raise _NotPlain  # immutable defaults only (models here are frozen): shared
                self.template[name] = value
        self.required = frozenset(required)
        self.fresh_lists = tuple(fresh)


Build = Callable[[Any], BaseModel]
_BUILDERS: dict[type[BaseModel], Build | None] = {}  # None: not plain (or being compiled)
_SLOT = {name: BaseModel.__dict__[name].__set__ for name in BaseModel.__slots__ if name != "__dict__"}


def _compile(cls: type[BaseModel]) -> Build:
    """The builder of one model class (nested models compiled with it); raises _NotPlain if any part
    of it has no rule."""
    if cls in _BUILDERS:
        known = _BUILDERS[cls]
        if known is None:
            raise _NotPlain
        return known
    _BUILDERS[cls] = None  # while compiling (and for good, if a part has no rule)
    if cls.__pydantic_post_init__ or cls.__private_attributes__ or cls.model_config.get("extra") == "allow":
        raise _NotPlain
    decorators = cls.__pydantic_decorators__
    if decorators.field_serializers or decorators.model_serializers or decorators.root_validators:
        raise _NotPlain
    # an after-validator sees the built value: the models' ones only check it (and return it
    # unchanged); any other mode could change what is built
    modes = [d.info.mode for d in decorators.field_validators.values()]
    modes += [d.info.mode for d in decorators.model_validators.values()]
    if any(mode != "after" for mode in modes) or decorators.validators:
        raise _NotPlain
    plan = Plan(cls)
    template, convs, fresh, issubset = plan.template, plan.convs, plan.fresh_lists, plan.required.issubset
    new, set_dict = object.__new__, object.__setattr__
    set_fields_set = _SLOT["__pydantic_fields_set__"]
    set_extra, set_private = _SLOT["__pydantic_extra__"], _SLOT["__pydantic_private__"]

    def build(data: Any) -> BaseModel:
        if type(data) is not dict:
            raise _NotPlain
        values = template.copy()  # field order, defaults in place
        for k, v in data.items():
            conv = convs.get(k, _MISSING)
            if conv is None:
                values[k] = v
            elif conv is _MISSING:
                raise _NotPlain  # a key that is not a field
            else:
                values[k] = conv(v)
        if not issubset(data):
            raise _NotPlain  # a required field is absent: let validation say so
        for name in fresh:
            if name not in data:
                values[name] = []
        m = new(cls)
        set_dict(m, "__dict__", values)
        set_fields_set(m, set(data))
        set_extra(m, None)
        set_private(m, None)
        return m

    _BUILDERS[cls] = build
    return build


def _model_conv(cls: type[BaseModel]) -> Conv:
    return _compile(cls)


def event_from_verified_json(unsigned: bytes) -> Event:
    """The event model of canonical bytes a verify stage validated; raises ValidationError only
    through the full-validation fallback (what is invalid is never rebuilt)."""
    try:
        data = from_json(unsigned)  # pydantic's own JSON parser (validate_json reads with it too)
        cls = MODEL_OF_KIND[_kind(data["kind"])]
        build = _BUILDERS.get(cls) or _compile(cls)
        return typing.cast(Event, build(data))
    except (_NotPlain, ValueError, TypeError, KeyError, AttributeError):
        return EVENT_ADAPTER.validate_json(unsigned)
