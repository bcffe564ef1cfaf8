"""What a user reads when a profile or override is wrong: pydantic's ValidationError as one line,
each problem as `dotted.key[0]: what is wrong; accepted: ...`, with the nearest accepted keys or
values ("did you mean metrics?"). The accepted keys and values come from the config models
themselves (their fields, their Literal types), so they never drift from what is checked."""
from __future__ import annotations

import difflib
import types
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

# Longest repr of a rejected value in a message (a whole section can be the value).
_VALUE_CHARS = 80
_SEQUENCES = (list, tuple, set, frozenset)
# Error type of a problem already worded (see `described`).
DESCRIBED = "described"


class ConfigError(ValueError):
    """A profile or override is missing or invalid; the message names it."""


def close_matches(word: Any, accepted: Iterable[Any]) -> str:
    """' (did you mean a, b?)' naming the accepted words nearest to `word`, or '' when none is near."""
    close = difflib.get_close_matches(str(word), [str(item) for item in accepted], n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def dotted_key(loc: tuple) -> str:
    """('score', 'iqa', 'metrics', 0) -> 'score.iqa.metrics[0]'."""
    key = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker of a dict key (the key itself precedes it)
            continue
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return key


def _unwrap(annotation: Any) -> Any:
    """The type inside Annotated[...] and X | None; None for a union of several types."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [member for member in get_args(annotation) if member is not type(None)]
            if len(members) != 1:
                return None
            annotation = members[0]
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def annotation_at(model: type[BaseModel], loc: tuple) -> Any:
    """The declared type at `loc` inside `model`; None where it cannot be told (unions, Any)."""
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        origin = get_origin(annotation)
        if _is_model(annotation):
            field = annotation.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            annotation = field.annotation
        elif origin in _SEQUENCES and isinstance(part, int):
            members = [member for member in get_args(annotation) if member is not Ellipsis]
            if not members:
                return None
            annotation = members[part] if origin is tuple and part < len(members) > 1 else members[0]
        elif origin is dict and part != "[key]":
            annotation = get_args(annotation)[1]
        else:
            return None
    return _unwrap(annotation)


def _value(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= _VALUE_CHARS else text[:_VALUE_CHARS - 3] + "..."


def _problem(error: dict, model: type[BaseModel] | None, nested: bool = False) -> str:
    """What is wrong in one pydantic error, without its key; `nested`: `model` is not the top level."""
    loc, kind = tuple(error["loc"]), error["type"]
    if kind == DESCRIBED:
        return error["msg"]
    if kind == "extra_forbidden":
        parent = annotation_at(model, loc[:-1]) if model else None
        if not _is_model(parent):
            return "unknown key"
        accepted = list(parent.model_fields)
        what = "section" if len(loc) == 1 and not nested else "key"
        return f"unknown {what}{close_matches(loc[-1], accepted)}; accepted: {', '.join(accepted)}"
    if kind == "literal_error":
        annotation = annotation_at(model, loc) if model else None
        accepted = [str(value) for value in get_args(annotation)] if get_origin(annotation) is Literal else []
        listed = ", ".join(accepted) or error["ctx"]["expected"]
        return f"invalid value {_value(error['input'])}{close_matches(error['input'], accepted)}; accepted: {listed}"
    if kind == "missing":
        text = "required, not set"
    elif kind in ("value_error", "assertion_error"):
        text = str(error["ctx"]["error"])
    else:
        text = f"{error['msg']}, got {_value(error['input'])}"
    return " ".join(text.split())


def describe_error(error: dict, model: type[BaseModel] | None = None) -> str:
    """One pydantic error (an item of ValidationError.errors()) as `key: problem[; accepted: ...]`.

    `model` is the validated model class: it tells the accepted keys of an unknown key's section
    and the accepted values of a Literal field."""
    key, text = dotted_key(tuple(error["loc"])), _problem(error, model)
    return f"{key}: {text}" if key else text


def described(exc: ValidationError, model: type[BaseModel]) -> ValidationError:
    """`exc`, raised by validating `model`, with each problem already worded against `model`.

    A field validator that validates a nested config by hand (a backbone's config, chosen by
    another field) raises this: pydantic prefixes each error's loc with the field's own, and the
    accepted keys and values of `model` survive into the outer message."""
    return problems_error(model.__name__, [(error["loc"], _problem(error, model, nested=True), error["input"])
                                           for error in exc.errors()])


def problems_error(title: str, problems: list[tuple[tuple, str, Any]]) -> ValidationError:
    """A ValidationError of `(loc, problem, input)` items worded by the caller; raised inside a
    validator, pydantic prefixes each loc with the validated field's or model's."""
    return ValidationError.from_exception_data(title, [
        {"type": PydanticCustomError(DESCRIBED, "{problem}", {"problem": problem}), "loc": tuple(loc), "input": value}
        for loc, problem, value in problems])


def describe_errors(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """Every problem of `exc` on one line, separated by ' | '."""
    return " | ".join(describe_error(error, model) for error in exc.errors())
