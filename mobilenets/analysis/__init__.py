"""The papers' analyses: convolution cost, published figures, the manifold experiment, the
width / resolution trade-off and the ablations."""
