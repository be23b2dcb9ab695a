"""The papers' analyses, and the tools that design a network as V3 was designed: convolution
cost, published figures, the manifold experiment, the width / resolution trade-off and `fit`,
the ablations, and `search` (latency tables on the target engine, NetAdapt, platform-aware
architecture search)."""
