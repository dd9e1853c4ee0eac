"""Config sections as frozen dataclasses: each section's keys, their types
and defaults stated once, by the module that owns the section.

`Section.from_config(values)` reads a section (a ConfigDict of a config
file, or the JSON of a workdir's config.json): a key the section lacks, or
a value of the wrong type, is one UsageError naming it; then the owner's
`validate` checks the values. configs/base.py builds the ConfigDicts that
`--config.section.key=value` overrides from the defaults here.
"""

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar

from lm.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Section:
  """Base of a config section; subclasses are frozen dataclasses that name
  themselves in NAME ('train', 'data.augment', ...)."""

  NAME: ClassVar[str] = ''

  @classmethod
  def from_config(cls, values) -> 'Section':
    """The section of `values` (a mapping), checked: UsageError names an
    unknown key, a value of the wrong type, or what `validate` refuses."""
    if not hasattr(values, 'items'):
      raise UsageError(f'config section {cls.NAME} is a '
                       f'{type(values).__name__}, not a mapping of keys')
    values = dict(values.items())
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
      raise UsageError(f'unknown {cls.NAME} config key(s) {unknown}; known '
                       f'keys are {known}')
    checked = {name: _typed(f'{cls.NAME}.{name}', hints[name], value)
               for name, value in values.items()}
    section = cls(**checked)
    section.validate()
    return section

  def validate(self) -> None:
    """The owner's checks of the values (their types are checked)."""

  def require(self, keys: tuple[str, ...], minimum: int,
              zero_means: str = '') -> None:
    """UsageError naming the first of `keys` below `minimum` (1: positive;
    0 with `zero_means`: what 0 asks for)."""
    for key in keys:
      value = getattr(self, key)
      if value < minimum:
        bound = 'positive' if minimum == 1 else f'>= {minimum}'
        note = f' (0: {zero_means})' if zero_means else ''
        raise UsageError(f'{self.NAME}.{key} must be {bound}{note}, got '
                         f'{value}')

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _typed(key: str, kind, value):
  """`value` as `kind` (bool, int, float, str, tuple[X, ...], a tuple of
  fixed types, or a Section), or UsageError naming `key`."""
  if isinstance(kind, type) and issubclass(kind, Section):
    return kind.from_config(value)
  origin = typing.get_origin(kind)
  if origin in (typing.Union, types.UnionType):
    for option in typing.get_args(kind):
      try:
        return _typed(key, option, value)
      except UsageError:
        pass
    raise _wrong(key, kind, value)
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      raise _wrong(key, kind, value)
    args = typing.get_args(kind)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_typed(key, args[0], item) for item in value)
    if len(args) != len(value):
      raise _wrong(key, kind, value)
    return tuple(_typed(key, arg, item) for arg, item in zip(args, value))
  if kind is bool:
    if isinstance(value, bool):
      return value
  elif kind is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  elif kind is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      try:
        number = float(value)
      except OverflowError:
        raise UsageError(f'{key} is too large for a float') from None
      if math.isnan(number):
        raise UsageError(f'{key} is NaN; give it a number')
      return number
  elif kind is str:
    if isinstance(value, str):
      return value
  elif kind is type(None):
    if value is None:
      return value
  else:
    raise TypeError(f'{key}: lm reads no config values of type {kind}')
  raise _wrong(key, kind, value)


def _wrong(key: str, kind, value) -> UsageError:
  wanted = getattr(kind, '__name__', None) or str(kind).replace('typing.', '')
  if isinstance(kind, types.GenericAlias):
    wanted = str(kind)
  given = 'None' if value is None else _article(type(value).__name__)
  return UsageError(f'{key}={value!r} is {given}, not {_article(wanted)}; '
                    'give it as one')


def _article(name: str) -> str:
  return f'{"an" if name[0] in "aeiou" else "a"} {name}'
