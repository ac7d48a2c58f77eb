"""FedImpro's protocol (``strategies/fedimpro.py``, ``clients/fedimpro.py``)."""

FEATURE_STATS = (
    "feature-stats"  # per-class feature statistics: the server's estimate, a client's noised share (ArrayRecord)
)
