"""What to record for one audited mapped class, worked out once per mapper.

The hot path (every flush, every bulk statement) only walks the precomputed tuples here: which
attribute maps to which column, which columns form the record id, which are masked. Excluded
columns and the mixin's own columns are simply not in ``fields``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Table, inspect
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.exc import UnmappedColumnError

from sessiontrace.audit.encoding import MASKED, JsonValue, encode_value
from sessiontrace.audit.errors import AuditSetupError
from sessiontrace.audit.mixin import AUDITED_COLUMNS, Audited
from sessiontrace.audit.writer import Change


@dataclass(frozen=True, slots=True)
class Field:
    """One recorded column: its attribute key on the class, its column, and how it is shown."""

    key: str
    column: Column[Any]
    name: str
    where: str  # "table.column", for error messages
    masked: bool


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

    def record_id(self, pk_values: Sequence[Any]) -> dict[str, JsonValue]:
        """The record id as a mapping {pk column: encoded value}, in primary key order."""
        return {f.name: encode_value(v, f.where) for f, v in zip(self.pk, pk_values, strict=True)}

    def encode(self, field: Field, value: Any) -> JsonValue:
        """``value`` of ``field`` as recorded: masked, or encoded (which may raise)."""
        if field.masked:
            return MASKED
        return encode_value(value, field.where)

    def inserted(self, values: Mapping[str, Any]) -> Change:
        """The change for a new row; ``values`` by attribute key (primary key included)."""
        names = [f.name for f in self.fields]
        new = {f.name: self.encode(f, values[f.key]) for f in self.fields}
        return Change(self.table_name, self.record_id([values[f.key] for f in self.pk]), "insert", names, None, new)

    def deleted(self, values: Mapping[str, Any]) -> Change:
        """The change for a removed row; ``values`` by attribute key (primary key included)."""
        names = [f.name for f in self.fields]
        old = {f.name: self.encode(f, values[f.key]) for f in self.fields}
        return Change(self.table_name, self.record_id([values[f.key] for f in self.pk]), "delete", names, old, None)

    def updated(
        self,
        pk_values: Sequence[Any],
        before: Mapping[str, Any],
        after: Mapping[str, Any],
        keys: Collection[str] | None = None,
    ) -> Change | None:
        """The change for the fields (of ``keys``, attribute keys, if given) whose value differs between ``before``
        and ``after``, or ``None`` when none does. Compared encoded, so ``1.0`` vs ``1.00`` counts."""
        names: list[str] = []
        old: dict[str, JsonValue] = {}
        new: dict[str, JsonValue] = {}
        for field in self.fields:
            if keys is not None and field.key not in keys:
                continue
            previous = encode_value(before[field.key], field.where)
            current = encode_value(after[field.key], field.where)
            if previous == current:
                continue
            names.append(field.name)
            old[field.name] = MASKED if field.masked else previous
            new[field.name] = MASKED if field.masked else current
        if not names:
            return None
        return Change(self.table_name, self.record_id(pk_values), "update", names, old, new)


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
        field = Field(prop.key, column, column.name, f"{name}.{column.name}", column.name in masked)
        if column.primary_key:
            pk.append(field)
        if column.name in excluded or column.name in AUDITED_COLUMNS:
            continue
        fields.append(field)
    # Primary key order as the mapper sees it (the identity key's order).
    pk.sort(key=lambda f: [c.name for c in mapper.primary_key].index(f.name))
    selected = tuple(pk) + tuple(f for f in fields if not f.column.primary_key)
    lookup = {f.name: f for f in selected} | {f.key: f for f in selected}
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
