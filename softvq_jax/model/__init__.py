"""The paper's autoencoders: bottleneck modules (``bottlenecks``, over ``variational`` and the
quantizer library), the MLP and CNN (``networks``), and ``autoencoder.Autoencoder`` with the
registry of bottlenecks that a config names (``autoencoder.BOTTLENECKS``)."""
