"""SCAFFOLD's protocol (``strategies/scaffold.py``, ``clients/scaffold.py``)."""

CONTROL = "control"  # the server's control variate c, sent with the model (ArrayRecord)
