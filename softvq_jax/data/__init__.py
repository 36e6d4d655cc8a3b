"""The input pipeline (``input_pipeline``: tfds without TensorFlow, the official files,
scikit-learn's digits) and checked, resumable downloads (``download``)."""
