"""What the experiments share: JSON-lines output, timing, restored runs, MNIST arrays and the benchmark tokenizer's numpy parts (which the torch halves import too)."""
