"""Tests of experiments/: each benchmark runs end to end on tiny inputs."""
