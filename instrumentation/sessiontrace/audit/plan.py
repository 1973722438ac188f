"""What to record for one audited mapped class, worked out once per mapper.

The hot path (every flush, every bulk statement) only walks the precomputed tuples here: which
attribute maps to which column, which columns form the record id, which are masked. Excluded
columns and the mixin's own columns are simply not in ``fields``.

A record id is built from primary key values in the form the database gives them back (a
``timestamptz`` in UTC, a ``CHAR(n)`` padded, a ``Numeric`` at its scale): the value the
application assigned and the value a later read returns then give the same id for the same row.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Column, Dialect, Table, inspect, types
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.exc import UnmappedColumnError

from sessiontrace.audit.encoding import MASKED, JsonValue, encode_value, same_encoded, stores_enum_names
from sessiontrace.audit.errors import AuditSetupError
from sessiontrace.audit.mixin import AUDITED_COLUMNS, Audited
from sessiontrace.audit.writer import Change

KeyForm = Callable[[Any], Any]
"""A primary key value in the form the database gives it back."""


@dataclass(frozen=True, slots=True)
class Field:
    """One recorded column: its attribute key on the class, its column, and how it is shown."""

    key: str
    column: Column[Any]
    name: str
    where: str  # "table.column", for error messages
    masked: bool
    enum_names: bool = True  # enum members as the column stores them: by name, or by value


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: one plan per mapper
class TablePlan:
    """How changes to one mapped class become audit rows."""

    mapper: Mapper[Any]
    table: Table
    table_name: str
    pk: tuple[Field, ...]
    fields: tuple[Field, ...]
    by_key: Mapping[str, Field]
    by_name: Mapping[str, Field]
    # Primary key then recorded fields, each once: the column list of every SELECT we issue.
    selected: tuple[Field, ...]
    # Attribute key or column name -> field, over ``selected``: to read statement parameters.
    lookup: Mapping[str, Field]
    # Recorded fields every UPDATE may change although the application did not set them:
    # ``onupdate`` / ``server_onupdate`` (``Computed``, triggers' ``FetchedValue``), the version counter.
    on_update: tuple[Field, ...] = ()
    # The names of ``fields``: every insert's and delete's ``changed_fields``.
    names: tuple[str, ...] = ()
    # Per dialect class, the primary key's ``KeyForm`` (``None``: as given), or ``None`` when the
    # whole key comes back as given (the common case: nothing to do); filled on first use.
    _key_forms: dict[type[Dialect] | None, tuple[KeyForm | None, ...] | None] = dataclasses.field(default_factory=dict)

    def _forms(self, dialect: Dialect | None) -> tuple[KeyForm | None, ...] | None:
        kind = type(dialect) if dialect is not None else None
        try:
            return self._key_forms[kind]
        except KeyError:
            forms = tuple(_key_form(f.column, dialect) for f in self.pk)
            found = self._key_forms[kind] = forms if any(forms) else None
            return found

    def key_form(self, pk_values: Sequence[Any], dialect: Dialect | None = None) -> tuple[Any, ...]:
        """``pk_values`` as the database gives them back (``dialect``: the one they are written with)."""
        forms = self._forms(dialect)
        if forms is None:
            return tuple(pk_values)
        return tuple(v if form is None else form(v) for form, v in zip(forms, pk_values, strict=True))

    def record_id(self, pk_values: Sequence[Any], dialect: Dialect | None = None) -> dict[str, JsonValue]:
        """The record id as a mapping {pk column: encoded value}, in primary key order, from the
        values as the database gives them back (see ``key_form``)."""
        if self._forms(dialect) is not None:
            pk_values = self.key_form(pk_values, dialect)
        pk = self.pk
        return {f.name: encode_value(v, f.where, enum_names=f.enum_names) for f, v in zip(pk, pk_values, strict=True)}

    def encode(self, field: Field, value: Any) -> JsonValue:
        """``value`` of ``field`` as recorded: masked, or encoded (which may raise)."""
        if field.masked:
            return MASKED
        return encode_value(value, field.where, enum_names=field.enum_names)

    def inserted(self, values: Mapping[str, Any], dialect: Dialect | None = None) -> Change:
        """The change for a new row; ``values`` by attribute key (primary key included)."""
        new = {f.name: self.encode(f, values[f.key]) for f in self.fields}
        record_id = self.record_id([values[f.key] for f in self.pk], dialect)
        return Change(self.table_name, record_id, "insert", self.names, None, new)

    def deleted(self, values: Mapping[str, Any], dialect: Dialect | None = None) -> Change:
        """The change for a removed row; ``values`` by attribute key (primary key included)."""
        old = {f.name: self.encode(f, values[f.key]) for f in self.fields}
        record_id = self.record_id([values[f.key] for f in self.pk], dialect)
        return Change(self.table_name, record_id, "delete", self.names, old, None)

    def updated(
        self,
        pk_values: Sequence[Any],
        before: Mapping[str, Any],
        after: Mapping[str, Any],
        keys: Collection[str] | None = None,
        dialect: Dialect | None = None,
    ) -> Change | None:
        """The change for the fields (of ``keys``, attribute keys, if given) whose value differs between ``before``
        and ``after``, or ``None`` when none does. Compared encoded, as canonical JSON, so ``1.0`` vs ``1.00``
        counts, and so does ``1`` vs ``true`` in a JSON value."""
        names: list[str] = []
        old: dict[str, JsonValue] = {}
        new: dict[str, JsonValue] = {}
        for field in self.fields:
            if keys is not None and field.key not in keys:
                continue
            previous = encode_value(before[field.key], field.where, enum_names=field.enum_names)
            current = encode_value(after[field.key], field.where, enum_names=field.enum_names)
            if same_encoded(previous, current):
                continue
            names.append(field.name)
            old[field.name] = MASKED if field.masked else previous
            new[field.name] = MASKED if field.masked else current
        if not names:
            return None
        return Change(self.table_name, self.record_id(pk_values, dialect), "update", names, old, new)


def _key_form(column: Column[Any], dialect: Dialect | None) -> KeyForm | None:
    """How the database gives back a value written to ``column`` (a primary key column), or ``None``
    when it gives it back as written. Aware datetimes are compared in UTC whatever the dialect
    (PostgreSQL answers in the session's time zone)."""
    column_type = column.type
    plain = column_type.impl_instance if isinstance(column_type, types.TypeDecorator) else column_type
    steps: list[KeyForm] = []
    if dialect is not None and dialect.name == "sqlite":
        # SQLAlchemy converts values to and from SQLite's storage itself (a datetime becomes text
        # without its offset, a Decimal a float): the round trip is what a read gives back.
        impl = column_type.dialect_impl(dialect)
        bind, result = impl.bind_processor(dialect), impl.result_processor(dialect, None)
        if bind is not None or result is not None:
            steps.append(_round_trip(bind, result))
    elif dialect is not None and dialect.name == "postgresql" and plain is column_type:
        if isinstance(plain, types.CHAR) and plain.length:
            steps.append(_padded(plain.length))
        elif isinstance(plain, types.Uuid) and not plain.as_uuid:
            steps.append(_uuid_text)
        elif isinstance(plain, types.Numeric) and not isinstance(plain, types.Float) and plain.scale is not None:
            steps.append(_at_scale(plain.scale))
    if isinstance(plain, types.DateTime):
        steps.append(_utc)
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]
    first, second = steps

    def both(value: Any) -> Any:
        return second(first(value))

    return both


def _round_trip(bind: Callable[[Any], Any] | None, result: Callable[[Any], Any] | None) -> KeyForm:
    def round_trip(value: Any) -> Any:
        if value is None:
            return None
        try:
            stored = bind(value) if bind is not None else value
            return result(stored) if result is not None else stored
        except Exception:  # the write itself would have failed: keep the value as given
            return value

    return round_trip


def _padded(length: int) -> KeyForm:
    def padded(value: Any) -> Any:  # CHAR(n) is blank-padded to n
        return value.ljust(length) if isinstance(value, str) else value

    return padded


def _uuid_text(value: Any) -> Any:  # uuid text comes back lower-case, with hyphens
    try:
        return str(uuid.UUID(value)) if isinstance(value, str) else value
    except ValueError:
        return value


def _at_scale(scale: int) -> KeyForm:
    exponent = Decimal(1).scaleb(-scale)

    def at_scale(value: Any) -> Any:  # numeric(p, s) rounds half away from zero to s digits
        if isinstance(value, (Decimal, int)) and not isinstance(value, bool):
            try:
                return Decimal(value).quantize(exponent, rounding=ROUND_HALF_UP)
            except InvalidOperation:
                return value
        return value

    return at_scale


def _utc(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(timezone.utc)
    return value


def is_audited(cls: type) -> bool:
    return isinstance(cls, type) and issubclass(cls, Audited)


def build_plan(
    mapper: Mapper[Any], exclude: Mapping[str, Collection[str]], mask: Mapping[str, Collection[str]]
) -> TablePlan:
    """The plan for ``mapper``; ``AuditSetupError`` naming the table if it cannot be audited."""
    table = mapper.local_table
    if not isinstance(table, Table):
        raise AuditSetupError(f"{mapper.class_.__name__} is mapped to {table!r}, not a table: it cannot be audited")
    name = table.fullname
    if mapper.inherits is not None and mapper.local_table is not mapper.inherits.local_table:
        raise AuditSetupError(f"{name}: joined-table inheritance is not supported by ORM auditing yet")
    if not table.primary_key.columns:
        raise AuditSetupError(
            f"table {name!r} has no primary key: audit rows identify records by primary key, so add one"
        )
    excluded = set(exclude.get(name, ()))
    masked = set(mask.get(name, ()))
    unknown = (excluded | masked) - set(table.columns.keys())
    if unknown:
        raise AuditSetupError(f"table {name!r} has no column(s) {sorted(unknown)} named in exclude/mask")
    fields: list[Field] = []
    pk: list[Field] = []
    for column in table.columns:
        try:
            prop = mapper.get_property_by_column(column)
        except UnmappedColumnError:
            continue  # not on the class: the ORM never writes it
        field = Field(
            prop.key, column, column.name, f"{name}.{column.name}", column.name in masked, stores_enum_names(column)
        )
        if column.primary_key:
            pk.append(field)
        if column.name in excluded or column.name in AUDITED_COLUMNS:
            continue
        fields.append(field)
    # Primary key order as the mapper sees it (the identity key's order).
    pk.sort(key=lambda f: [c.name for c in mapper.primary_key].index(f.name))
    selected = tuple(pk) + tuple(f for f in fields if not f.column.primary_key)
    lookup = {f.name: f for f in selected} | {f.key: f for f in selected}
    version = mapper.version_id_col
    on_update = tuple(
        f
        for f in fields
        if f.column.onupdate is not None or f.column.server_onupdate is not None or f.column is version
    )
    return TablePlan(
        mapper=mapper,
        table=table,
        table_name=name,
        pk=tuple(pk),
        fields=tuple(fields),
        by_key={f.key: f for f in fields},
        by_name={f.name: f for f in fields},
        selected=selected,
        lookup=lookup,
        on_update=on_update,
        names=tuple(f.name for f in fields),
    )


def audited_mappers() -> list[Mapper[Any]]:
    """Mappers of every class inheriting ``Audited`` that is mapped now."""
    found: list[Mapper[Any]] = []
    pending: list[type] = list(Audited.__subclasses__())
    seen: set[type] = set()
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        pending.extend(cls.__subclasses__())
        mapper: object = inspect(cls, raiseerr=False)
        if isinstance(mapper, Mapper):
            found.append(mapper)
    return found
