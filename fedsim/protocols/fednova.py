"""FedNova's protocol (``strategies/fednova.py``, ``clients/fednova.py``)."""

TAU_EFF = "tau-eff"  # in METRICS: the client's effective number of steps (its accumulation norm)
