"""The README's example runs as written."""

import os
import re

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_readme_bottleneck_example_runs():
  with open(README) as f:
    text = f.read()
  section = text[text.index("## Using a bottleneck in your own model"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  assert len(code.strip().splitlines()) <= 12
  exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
