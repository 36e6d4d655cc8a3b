"""The README's example runs as written."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


@pytest.mark.slow
@pytest.mark.parametrize("heading", ["## Using a bottleneck in your own model",
                                     "## Quantizers in your own model"])
def test_readme_examples_run(heading):
  with open(README) as f:
    text = f.read()
  section = text[text.index(heading):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  assert len(code.strip().splitlines()) <= 12
  exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
