"""fedsim: a federated-learning research framework on Flower's Message API."""

__version__ = "0.1.0"
