"""The README's examples run as written."""

import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
ROOT = os.path.dirname(README)


def _snippets(heading):
  """The python blocks of the README section under ``heading``."""
  with open(README) as f:
    text = f.read()
  section = text[text.index(heading) + len(heading):]
  section = section[:section.index("\n## ")] if "\n## " in section else section
  return re.findall(r"```python\n(.*?)```", section, re.S)


SNIPPETS = ([("bottleneck", code) for code in _snippets("## Using a bottleneck in your own model")]
            + [(f"quantizers{i}", code) for i, code in
               enumerate(_snippets("## Quantizers in your own model"))])


@pytest.mark.slow
@pytest.mark.parametrize("name,code", SNIPPETS, ids=[name for name, _ in SNIPPETS])
def test_readme_examples_run(name, code):
  assert len(code.strip().splitlines()) <= 16, name
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]


def test_the_quantizer_section_shows_every_context():
  code = "\n".join(_snippets("## Quantizers in your own model"))
  for needle in ("import flax.linen", "from flax import nnx", "streaming.", "shard_map",
                 "bfloat16", "chunk_size", ".embed"):
    assert needle in code, needle
