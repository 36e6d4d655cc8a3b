"""Shared configuration defaults; the per-dataset files live in ``configs/``."""
