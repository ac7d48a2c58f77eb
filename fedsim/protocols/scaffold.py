"""SCAFFOLD's protocol (``strategies/scaffold.py``, ``clients/scaffold.py``)."""

CONTROL = "control"  # the server's control variate c, sent with the model (ArrayRecord)
CONTROL_DELTA = "control-delta"  # a client's change of its control variate, sent with the model (ArrayRecord)
