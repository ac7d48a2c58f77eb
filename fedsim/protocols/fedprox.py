"""FedProx's protocol (``strategies/fedprox.py``, ``clients/fedprox.py``)."""

MU = "proximal-mu"  # in CONFIG: the weight of the proximal term
