"""deconcnn: instrumented CIFAR ResNet training sweeps whose every logged number can be trusted."""

__version__ = "0.1.0"
