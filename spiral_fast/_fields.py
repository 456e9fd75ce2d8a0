"""Documented, validated fields of the settings dataclasses (``RolloutConfig`` and the sections of
``spiral-fast train``'s config): each field carries its documentation and its rules in its metadata,
so the TOML schema, its help text and the validation are derived from one place.

Rules by annotation: ``bool`` must be a bool; ``int`` an int >= 1 and ``float`` a finite number > 0,
unless ``minimum`` lowers the bound (inclusive); ``str`` one of ``choices`` when given; ``X | None``
may also be None; ``list`` / ``dict`` of that type.
"""

from __future__ import annotations

import dataclasses
import math

_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "list": list, "dict": dict, "tuple": tuple}


def setting(default, doc: str, *, choices=None, minimum=None, default_factory=None):
    """A dataclass field with its documentation (``metadata["doc"]``) and rules."""
    meta = {"doc": doc, "choices": tuple(choices) if choices is not None else None, "minimum": minimum}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_types(f) -> tuple[tuple[type, ...], bool]:
    """(the Python types a field accepts, whether None is allowed), from its annotation."""
    names = [t.strip() for t in str(f.type).split("|")]
    types = tuple(_TYPES[n] for n in names if n in _TYPES)
    return types, "None" in names


def check_settings(obj, prefix: str = "") -> None:
    """ValueError naming ``prefix + field`` for the first field of the dataclass ``obj`` whose value
    breaks its rules. int values of float fields are accepted (and stored as floats)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = prefix + f.name
        types, nullable = field_types(f)
        if value is None:
            if nullable:
                continue
            raise ValueError(f"{name} must not be None")
        choices = f.metadata.get("choices")
        if choices is not None:
            if value not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
            continue
        minimum = f.metadata.get("minimum")
        if bool in types and not isinstance(value, bool):
            if not any(t is not bool and isinstance(value, t) for t in types):
                raise ValueError(f"{name} must be a bool, got {value!r}")
        if isinstance(value, bool) and bool not in types:
            raise ValueError(f"{name} must be {_names(types)}, got {value!r}")
        if isinstance(value, bool):
            continue
        if float in types and isinstance(value, int):
            object.__setattr__(obj, f.name, float(value))
            value = float(value)
        if isinstance(value, float) and float in types:
            low = 0.0 if minimum is None else minimum
            if not math.isfinite(value) or value < low or (minimum is None and value == 0):
                raise ValueError(
                    f"{name} must be a finite number {'> 0' if minimum is None else f'>= {low}'}, got {value!r}"
                )
        elif isinstance(value, int) and int in types:
            low = 1 if minimum is None else minimum
            if value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        elif not isinstance(value, types):
            raise ValueError(f"{name} must be {_names(types)}, got {value!r}")


def _names(types) -> str:
    return " or ".join(t.__name__ for t in types)


def docs(cls) -> dict[str, str]:
    """{field: documentation} of a settings dataclass, in declaration order."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}
