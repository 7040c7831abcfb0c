"""How a config error reads: one `ConfigError` per key, named as the user wrote it (list indices included,
pydantic's union-branch tags left out), with what that key expects, taken from the field's description.

Also the one check pydantic does not make: a boolean where a number is expected. pydantic takes true for 1
and false for 0, and YAML reads yes/no and on/off as booleans, so ``candidate_weight: yes`` would route 1 %
and ``error_rate: {maximum: true}`` would be a gate that never fails. It is checked from the annotations,
so it holds in every section alike, the ones defined outside `serving.config` included.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from rollout.policy import KEY_PROBLEMS, did_you_mean
from serving.errors import ConfigError

Loc = tuple[int | str, ...]

NOT_A_NUMBER = "a number is expected, not a boolean (YAML also reads yes/no and on/off as booleans)"

# pydantic's error types for a value that is not of the type at all (vs. one of the type that breaks a rule)
_MISMATCH_SUFFIXES = ("_type", "_parsing")


@dataclass(frozen=True)
class _Located:
    loc: Loc  # the keys as the user wrote them
    annotation: Any  # what is expected there; None where it is not known
    description: str  # of the innermost field on the way
    union_loc: Loc | None  # where pydantic tried a union's branches, if it did


@dataclass(frozen=True)
class _Found:
    where: _Located
    kind: str  # pydantic's error type, or "boolean"
    problem: str
    expected: str
    got: Any = None

    @property
    def mismatch(self) -> bool:
        """The value is not of this union branch's type at all."""
        return self.where.loc == self.where.union_loc and self.kind.endswith(_MISMATCH_SUFFIXES)


def config_errors(
    model: type[BaseModel], exc: ValidationError | None, booleans: list[tuple[Loc, bool]], prefix: str = ""
) -> list[ConfigError]:
    """The errors of validating against ``model``: the booleans given for numbers, then pydantic's."""
    found = []
    for loc, value in booleans:
        where = _locate(model, loc, tagged=False)
        found.append(_Found(where, "boolean", NOT_A_NUMBER, where.description, value))
    found += _pydantic_errors(model, exc) if exc is not None else []
    return [
        ConfigError(
            ".".join(str(p) for p in ((prefix,) if prefix else ()) + f.where.loc) or "(root)",
            f.problem,
            f.expected,
            f.got,
        )
        for f in _one_per_union(_without_echoes(found))
    ]


def booleans_for_numbers(annotation: Any, data: Any, loc: Loc = ()) -> list[tuple[Loc, bool]]:
    """Where ``data`` holds a boolean and ``annotation`` expects a number (and not a boolean)."""
    annotation = _unwrap(annotation)
    branches = _union_branches(annotation) or (annotation,)
    if isinstance(data, bool):
        number = any(b in (int, float) for b in branches) and not any(b in (bool, Any) for b in branches)
        return [(loc, data)] if number else []
    found = []
    for branch in branches:
        origin, args = get_origin(branch), get_args(branch)
        if (fields := _model_fields(branch)) and isinstance(data, dict):
            for key, value in data.items():
                if key in fields:
                    found += booleans_for_numbers(fields[key].annotation, value, (*loc, key))
        elif origin in (list, tuple) and isinstance(data, list | tuple) and args:
            for i, item in enumerate(data):
                if (item_type := _item_type(branch, i)) is not None:
                    found += booleans_for_numbers(item_type, item, (*loc, i))
        elif origin is dict and isinstance(data, dict) and len(args) == 2:
            for key, value in data.items():
                found += booleans_for_numbers(args[1], value, (*loc, key))
    return found


def _pydantic_errors(model: type[BaseModel], exc: ValidationError) -> list[_Found]:
    found = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if (
            err["type"] == KEY_PROBLEMS
        ):  # a validator that names the keys itself (`rollout.policy.KeyProblem`)
            for problem in err["ctx"]["problems"]:
                where = _locate(model, (*loc, *problem.loc))
                expected = problem.expected or where.description
                found.append(_Found(where, err["type"], problem.problem, expected, problem.got))
            continue
        where = _locate(model, loc)
        problem = str(err["msg"]).removeprefix("Value error, ")
        expected = where.description
        if err["type"] == "extra_forbidden":
            allowed = sorted(_model_fields(_locate(model, loc[:-1]).annotation))
            problem = f"unknown key{did_you_mean(str(where.loc[-1]), allowed)}"
            expected = f"one of {allowed}"
        got = err.get("input") if err["type"] != "missing" else None
        found.append(_Found(where, err["type"], problem, expected, None if isinstance(got, dict) else got))
    return found


def _without_echoes(found: list[_Found]) -> list[_Found]:
    """Drops what pydantic says where it took a boolean for a number: at the key or below it (e.g. "greater
    than 0"), and the checks of the sections around it, which saw a 1 or a 0 (e.g. "weights must increase");
    and a tuple's "at least 1 item after validation" when its items have errors of their own (pydantic counts
    only the items that passed)."""
    booleans = [f.where.loc for f in found if f.kind == "boolean"]

    def echoes_a_boolean(loc: Loc) -> bool:
        return any(loc[: len(b)] == b or b[: len(loc)] == loc for b in booleans)

    def items_failed(loc: Loc) -> bool:
        return any(len(f.where.loc) > len(loc) and f.where.loc[: len(loc)] == loc for f in found)

    return [
        f
        for f in found
        if f.kind == "boolean"
        or not (echoes_a_boolean(f.where.loc) or (f.kind == "too_short" and items_failed(f.where.loc)))
    ]


def _one_per_union(found: list[_Found]) -> list[_Found]:
    """pydantic tries a value on each branch of a union (``latency_ms: float | LatencySpec``) and reports
    every branch. Keeps the errors of the branch whose type the value has; when it has none, one error."""
    out: list[_Found] = []
    merged: dict[Loc, int] = {}
    for f in found:
        union = f.where.union_loc
        if union is not None and f.mismatch:
            if any(g.where.union_loc == union and not g.mismatch for g in found):
                continue  # the value has another branch's type: that branch's errors say what is wrong
            if union in merged:
                first = out[merged[union]]
                more = f.problem.removeprefix("Input should be ")
                out[merged[union]] = _Found(
                    first.where, first.kind, f"{first.problem}; or {more}", first.expected, first.got
                )
                continue
            merged[union] = len(out)
        out.append(f)
    return out


def _locate(model: type[BaseModel], loc: Loc, *, tagged: bool = True) -> _Located:
    """Follows a ``loc`` through models, optional sections, unions, tuples, lists and dicts; pydantic's
    (``tagged``) names the union branch it tried, the user's keys do not."""
    current: Any = model
    description = ""
    keys: list[int | str] = []
    union_loc = None
    for part in loc:
        current = _unwrap(current)
        branches = _union_branches(current)
        if branches and isinstance(part, str) and tagged:
            # a branch tag: 'float', 'LatencySpec', 'function-after[_check(), LatencySpec]'
            union_loc = tuple(keys) if union_loc is None else union_loc
            current = next(
                (b for b in branches if _model_fields(b) and part.rstrip("]").endswith(b.__name__)), None
            )
            continue
        if branches:
            current = next((b for b in branches if part in _model_fields(b)), None)
        keys.append(part)
        fields = _model_fields(current)
        if fields:
            info = fields.get(part) if isinstance(part, str) else None
            current, description = (info.annotation, info.description or "") if info else (None, "")
        elif get_origin(current) in (list, tuple) and isinstance(part, int):
            current = _item_type(current, part)
        elif get_origin(current) is dict and len(get_args(current)) == 2:
            current = get_args(current)[1]
        else:
            current = None
    return _Located(tuple(keys), _unwrap(current), description, union_loc)


def _item_type(sequence: Any, index: int) -> Any:
    """The type of item ``index`` of a ``list[X]``, ``tuple[X, ...]`` or ``tuple[X, Y]``; None if unknown."""
    args = get_args(sequence)
    if get_origin(sequence) is tuple and args and args[-1] is not Ellipsis:
        return args[index] if 0 <= index < len(args) else None
    return args[0] if args else None


def _unwrap(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` → ``X``; other unions stay as they are."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif len(branches := _union_branches(annotation, keep_optional=True)) == 1:
            annotation = branches[0]
        else:
            return annotation


def _union_branches(annotation: Any, *, keep_optional: bool = False) -> tuple[Any, ...]:
    """The non-None types of a union of two or more (pydantic tags each branch in its errors); with
    ``keep_optional``, also the one of ``X | None`` (where pydantic tags none). Empty for the rest."""
    if get_origin(annotation) not in (Union, types.UnionType):
        return ()
    branches = tuple(a for a in get_args(annotation) if a is not type(None))
    return branches if keep_optional or len(branches) > 1 else ()


def _model_fields(annotation: Any) -> dict[str, Any]:
    is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return dict(annotation.model_fields) if is_model else {}
