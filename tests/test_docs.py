"""The README and docs/: every python snippet runs as written, and the quantizer page names
every option of every quantizer."""

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from softvq_jax import quantizers
from tests import ROOT

PAGES = ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(
    os.path.join(ROOT, "docs"))) if f.endswith(".md")]


def _snippets(page):
  with open(os.path.join(ROOT, page)) as f:
    return re.findall(r"```python\n(.*?)```", f.read(), re.S)


SNIPPETS = [(f"{page}:{i}", code) for page in PAGES for i, code in enumerate(_snippets(page))]


def test_the_pages_hold_snippets_and_the_readme_stays_a_front_page():
  assert len(SNIPPETS) >= 10
  assert len(open(os.path.join(ROOT, "README.md")).read().splitlines()) <= 150


@pytest.mark.slow
@pytest.mark.parametrize("name,code", SNIPPETS, ids=[name for name, _ in SNIPPETS])
def test_snippets_run(name, code):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]


def test_the_quantizer_page_shows_every_context():
  code = "\n".join(_snippets("docs/quantizers.md"))
  for needle in ("import flax.linen", "from flax import nnx", "streaming.", "shard_map",
                 "bfloat16", "chunk_size", ".embed", "nnx.update", "serialization"):
    assert needle in code, needle


@pytest.mark.parametrize("module", [quantizers.SoftVectorQuantizer, quantizers.FSQ,
                                    quantizers.LFQ, quantizers.ResidualQuantizer])
def test_the_quantizer_page_names_every_option(module):
  page = open(os.path.join(ROOT, "docs", "quantizers.md")).read()
  options = [f.name for f in dataclasses.fields(module) if f.name not in ("parent", "name")]
  assert options
  missing = [o for o in options if not re.search(rf"`[^`\n]*\b{o}\b[^`\n]*`", page)]
  assert not missing, f"{module.__name__}: {missing}"
