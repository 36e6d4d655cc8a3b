"""What every linen quantizer module shares: its options, declared once as
the frozen dataclasses of ``options``, become the module's dataclass fields,
and an unknown option gets one ``TypeError`` that lists the valid ones."""

import dataclasses
import functools
from typing import Sequence

import flax.linen as nn

from softvq_jax.quantizers.options import check_names
from softvq_jax.quantizers.options import option_names


class NamedOptions:
  """A linen module whose unknown keyword options get one ``TypeError``
  listing the valid ones (and ours for vector-quantize-pytorch's names)."""

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    init = cls.__init__

    @functools.wraps(init)
    def checked_init(self, *args, **options):
      check_names(cls.__name__, cls, options)
      init(self, *args, **options)

    cls.__init__ = checked_init


class OptionsModule(NamedOptions, nn.Module):
  """A module with ``options``: its fields of ``options_classes`` as one
  frozen dataclass (the first class; the rest add fields to it)."""
  options_classes = ()

  @property
  def options(self):
    """The module's options as a frozen, hashable ``options`` dataclass."""
    names = option_names(self.options_classes[0])
    return self.options_classes[0](**{name: getattr(self, name) for name in names})


def dropout_rng(module: nn.Module, train: bool):
  """A ``'noise'`` key for a stack's quantizer dropout, where one is drawn."""
  return module.make_rng("noise") if train and module.quantizer_dropout > 0 else None


def options_base(name: str, base: type, options_classes: Sequence[type],
                 positional: Sequence[str] = ()) -> type:
  """A linen base class with the fields of ``options_classes`` that ``base``
  lacks, keyword-only (their defaults and meanings in ``options``), except
  the ``positional`` ones, which the module class declares itself."""
  inherited = ({f.name for f in dataclasses.fields(base)} if dataclasses.is_dataclass(base)
               else set())
  fields = {f.name: f for cls in options_classes for f in dataclasses.fields(cls)
            if f.name not in inherited and f.name not in positional}
  namespace = {"__module__": base.__module__, "__qualname__": name,
               "__annotations__": {n: f.type for n, f in fields.items()},
               "__doc__": f"The keyword options of ``options.{options_classes[-1].__name__}``.",
               "options_classes": tuple(options_classes),
               **{n: f.default for n, f in fields.items()}}
  return type(name, (base,), namespace, kw_only=True)
