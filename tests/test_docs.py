"""The README and docs/: every python snippet runs as written, and the quantizer page names
every option of every quantizer."""

import dataclasses
import os
import re

import pytest

from softvq_jax import quantizers
from tests import ROOT

PAGES = ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(
    os.path.join(ROOT, "docs"))) if f.endswith(".md")]


def _snippets(page):
  with open(os.path.join(ROOT, page)) as f:
    return re.findall(r"```python\n(.*?)```", f.read(), re.S)


SNIPPETS = {page: _snippets(page) for page in PAGES}


def test_the_pages_hold_snippets_and_the_readme_stays_a_front_page():
  assert sum(len(codes) for codes in SNIPPETS.values()) >= 10
  assert len(open(os.path.join(ROOT, "README.md")).read().splitlines()) <= 150


@pytest.mark.slow
@pytest.mark.parametrize("page,index", [(page, i) for page, codes in SNIPPETS.items()
                                        for i in range(len(codes))])
def test_snippets_run(page, index, monkeypatch):
  """Each snippet as written, in a fresh namespace, from the repository's root (the
  multi-device one on the devices there are; tests/quantizers/test_linen.py runs the same
  on 4)."""
  monkeypatch.chdir(ROOT)
  exec(compile(SNIPPETS[page][index], f"{page} snippet {index}", "exec"),  # pylint: disable=exec-used
       {"__name__": "__main__"})


def test_the_quantizer_page_shows_every_context():
  code = "\n".join(SNIPPETS["docs/quantizers.md"])
  for needle in ("import flax.linen", "from flax import nnx", "streaming.", "shard_map",
                 "bfloat16", "chunk_size", ".embed", "nnx.update", "serialization"):
    assert needle in code, needle


@pytest.mark.parametrize("module", [quantizers.SoftVectorQuantizer, quantizers.SimVQ,
                                    quantizers.FSQ, quantizers.LFQ, quantizers.ResidualQuantizer,
                                    quantizers.ResidualFSQ, quantizers.GroupedResidualQuantizer])
def test_the_quantizer_page_names_every_option(module):
  page = open(os.path.join(ROOT, "docs", "quantizers.md")).read()
  options = [f.name for f in dataclasses.fields(module) if f.name not in ("parent", "name")]
  assert options
  missing = [o for o in options if not re.search(rf"`[^`\n]*\b{o}\b[^`\n]*`", page)]
  assert not missing, f"{module.__name__}: {missing}"
