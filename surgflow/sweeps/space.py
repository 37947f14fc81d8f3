"""A sweep's search space: a trial's values → the recipe that trial trains.

Each searched field of a recipe's ``sweep.space`` (a dotted recipe field such as ``optim.lr``)
is sampled through an Optuna trial: ``suggest_categorical`` for ``choices``, ``suggest_int``
when both bounds of a range are integers (and its step, if any, is whole), ``suggest_float``
otherwise, with the range's ``log`` scale and ``step``. The values are written onto the base
recipe's dump and the result validated again by :func:`~surgflow.training.recipe.parse_recipe`,
so a value the recipe cannot take is a :class:`~surgflow.errors.ConfigError` naming the field.

Pure: nothing here opens a study or a store; any object with Optuna's ``suggest_*`` methods and
a ``number`` (a ``Trial``, a ``FixedTrial``) will do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from surgflow.errors import ConfigError
from surgflow.training.recipe import Recipe, SweepParam, SweepSpec, parse_recipe

_SCALARS = (str, int, float, bool, type(None))


class Suggests(Protocol):
    """What a trial offers here (``optuna.trial.Trial`` and ``FixedTrial`` both do)."""

    @property
    def number(self) -> int: ...

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def is_int_range(param: SweepParam) -> bool:
    """A range searched over integers: both bounds are ints and the step, if any, is whole."""
    ints = isinstance(param.low, int) and isinstance(param.high, int)
    return ints and (param.step is None or float(param.step).is_integer())


def check_param(key: str, param: SweepParam) -> None:
    """ConfigError, naming ``sweep.space.<key>``, for what Optuna cannot search."""
    where = f"sweep.space.{key}"
    if param.choices is not None:
        bad = [c for c in param.choices if not isinstance(c, _SCALARS)]
        if bad:
            raise ConfigError(f"{where}: choices must be numbers, strings, booleans or null, "
                              f"got {bad[0]!r}")
        return
    if param.log and param.step is not None:
        raise ConfigError(f"{where}: a log range cannot have a step (got step {param.step:g})")


def suggest(trial: Suggests, space: Mapping[str, SweepParam]) -> dict[str, Any]:
    """Dotted field → the value ``trial`` samples for it, in the order of ``space``."""
    values: dict[str, Any] = {}
    for key, param in space.items():
        check_param(key, param)
        if param.choices is not None:
            values[key] = trial.suggest_categorical(key, list(param.choices))
        elif is_int_range(param):
            step = int(param.step) if param.step is not None else 1
            values[key] = trial.suggest_int(key, int(param.low), int(param.high),  # type: ignore[arg-type]
                                            step=step, log=param.log)
        else:
            values[key] = trial.suggest_float(key, float(param.low), float(param.high),  # type: ignore[arg-type]
                                              step=param.step, log=param.log)
    return values


def apply(recipe: Recipe, values: Mapping[str, Any], *, name: str | None = None,
          origin: str | None = None) -> Recipe:
    """``recipe`` with each dotted field of ``values`` set, validated again; renamed to ``name``
    and without its ``sweep`` section (the result is one trial's recipe, not a sweep).

    A field under a section the recipe does not have (``temporal.layers`` on a recipe without
    a temporal stage) or a value the field cannot take is a ConfigError naming the field."""
    origin = origin or f"recipe {name or recipe.name!r}"
    data = recipe.model_dump(mode="json")
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node: Any = data
        for i, part in enumerate(parents):
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                section = ".".join(parents[: i + 1])
                raise ConfigError(f"{origin}: field {key!r} is searched, but the recipe has no "
                                  f"{section!r} section to set it in")
        if leaf not in node:
            raise ConfigError(f"{origin}: field {key!r} does not exist in the recipe")
        node[leaf] = value
    data["sweep"] = None
    if name is not None:
        data["name"] = name
    return parse_recipe(data, origin=origin)


def trial_name(recipe: Recipe, number: int) -> str:
    """The name of trial ``number``'s recipe: ``<recipe>-t<number>``."""
    return f"{recipe.name}-t{number}"


def trial_recipe(recipe: Recipe, trial: Suggests) -> tuple[Recipe, dict[str, Any]]:
    """The recipe trial ``trial`` trains (named ``<recipe>-t<number>``), and its values."""
    spec = sweep_spec(recipe)
    values = suggest(trial, spec.space)
    name = trial_name(recipe, trial.number)
    return apply(recipe, values, name=name,
                 origin=f"recipe {recipe.name!r}, trial {trial.number}"), values


def base_values(recipe: Recipe) -> dict[str, Any]:
    """The recipe's own value of every searched field: trial 0's values, so the sweep measures
    the recipe as written. ConfigError when one of them lies outside its range or choices (the
    recipe as written would then not be a point of its own search)."""
    spec = sweep_spec(recipe)
    data = recipe.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key, param in spec.space.items():
        check_param(key, param)
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and not (param.choices and None in param.choices):
            raise ConfigError(f"recipe {recipe.name!r}: sweep.space.{key} searches a field the "
                              "recipe does not set (add its section to the recipe)")
        if not contains(param, node):
            raise ConfigError(f"recipe {recipe.name!r}: sweep.space.{key}: the recipe's own "
                              f"value {node!r} lies outside the search ({describe(param)}); "
                              "trial 0 trains the recipe as written, so its values must be in "
                              "the space")
        if param.choices is not None:
            out[key] = _choice(param, node)
        else:
            out[key] = int(node) if is_int_range(param) else float(node)
    return out


def contains(param: SweepParam, value: Any) -> bool:
    """Whether ``value`` is a point of ``param``'s search."""
    if param.choices is not None:
        return _choice(param, value) is not _MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    assert param.low is not None and param.high is not None
    if not param.low <= value <= param.high:
        return False
    if is_int_range(param) and not float(value).is_integer():
        return False
    if param.step is not None:
        steps = (value - param.low) / param.step
        return abs(steps - round(steps)) < 1e-9
    return True


_MISSING = object()


def _choice(param: SweepParam, value: Any) -> Any:
    """The choice equal to ``value`` (numbers by value, a boolean only to a boolean)."""
    for c in param.choices or ():
        if isinstance(c, bool) != isinstance(value, bool):
            continue
        if c == value:
            return c
    return _MISSING


def describe(param: SweepParam) -> str:
    """``param`` as a person reads it: ``choices [...]`` or ``[low, high] (log, step s)``."""
    if param.choices is not None:
        return f"choices {param.choices!r}"
    extras = (["log"] if param.log else []) + ([f"step {param.step:g}"] if param.step else [])
    return f"[{param.low:g}, {param.high:g}]" + (f" ({', '.join(extras)})" if extras else "")


def sweep_spec(recipe: Recipe) -> SweepSpec:
    """The recipe's sweep section; ConfigError naming the recipe when it has none."""
    if recipe.sweep is None:
        raise ConfigError(f"recipe {recipe.name!r} has no sweep section: add one (sweep: "
                          "{trials, metric, space: {dotted.field: {low, high} | {choices}}})")
    return recipe.sweep
