"""The package's parts, as its folders draw them: imports only point down."""

import ast
import functools
import os

from tests import ROOT

PACKAGE = os.path.join(ROOT, "softvq_jax")
# What each part may import from the package: the library stands alone, the model builds on
# it, the launcher on everything. The shims of moved modules are for users, not for the code.
ALLOWED = {
    "quantizers": set(),
    "model": {"quantizers"},
    "data": {"errors"},
    "errors": set(),
    "evaluation": {"quantizers"},
    "launch": {"quantizers", "model", "data", "errors", "evaluation"},
    "main": {"launch", "errors"},
    "sweep": {"launch"},
    "bottlenecks": {"quantizers", "model"},
    "nnx": {"quantizers"},
    "streaming": {"quantizers"},
}


def node(module: str) -> str:
  """The part of ``softvq_jax.<part>[.<module>]``: a folder, or a root module."""
  return module.split(".")[1]


def imports_of(path: str):
  tree = ast.parse(open(path).read())
  for n in ast.walk(tree):
    if isinstance(n, ast.Import):
      yield from (alias.name for alias in n.names)
    elif isinstance(n, ast.ImportFrom) and n.module:
      yield from (f"{n.module}.{alias.name}" for alias in n.names)


def graph():
  edges = {}
  for folder, _, files in os.walk(PACKAGE):
    for f in files:
      if not f.endswith(".py"):
        continue
      rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
      if rel == "softvq_jax.__init__":
        continue
      targets = {node(m) for m in imports_of(os.path.join(folder, f))
                 if m.startswith("softvq_jax.")}
      edges.setdefault(node(rel), set()).update(targets - {node(rel)})
  return edges


def test_every_part_imports_only_the_parts_below_it():
  edges = graph()
  assert set(edges) == set(ALLOWED), "a part was added or removed: place it in ALLOWED"
  for part, targets in edges.items():
    assert targets <= ALLOWED[part], f"{part} imports {sorted(targets - ALLOWED[part])}"


def test_the_parts_have_no_loop_and_short_chains():
  edges = graph()

  @functools.lru_cache(maxsize=None)
  def depth(part, seen=()):
    assert part not in seen, f"an import loop: {' -> '.join(seen + (part,))}"
    return 1 + max((depth(t, seen + (part,)) for t in edges.get(part, ())), default=0)

  assert max(depth(part) for part in edges) <= 8
