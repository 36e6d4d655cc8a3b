"""Speed and memory: the training path, the quantizers against vector-quantize-pytorch, large K, the NaN guard."""
