"""The experiment launcher behind ``python -m softvq_jax.main`` and ``softvq_jax.sweep``.

Runs (``runs``, ``train``, ``program``, ``steps``, ``loop``, ``sweep``, ``background``),
their configs (``config_keys``, ``presets``, ``validation``), their files (``workdir``,
``checkpoints``, ``training_log``, ``tables``, ``figures``, ``provenance``) and the process
around them (``cli``, ``signals``, ``console``, ``locks``, ``distributed``).
"""
