"""The training log: a line torn by a kill is dropped on resume."""

import json

import pytest

from softvq_jax.launch import training_log


@pytest.mark.slow
@pytest.mark.parametrize("start_step,kept", [(20, [10, 20]), (10, [10]), (0, [])])
def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path, start_step, kept):
  lines = [json.dumps({"step": s, "loss": 1.0}) for s in (10, 20, 30)]
  (tmp_path / training_log.METRICS_FILE).write_text("\n".join(lines[:2]) + '\n{"step": 45')
  training_log.MetricsLog(str(tmp_path), start_step).close()
  records = [json.loads(line) for line in open(tmp_path / training_log.METRICS_FILE)]
  assert [r["step"] for r in records] == kept
