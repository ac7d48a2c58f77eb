"""FedImpro's protocol (``strategies/fedimpro.py``, ``clients/fedimpro.py``)."""

# per-class feature statistics: the server's estimate, a client's noised share (ArrayRecord)
FEATURE_STATS = "feature-stats"
MEAN, STD = "mean", "std"  # the arrays of FEATURE_STATS, each (classes, feature size)
LAMBDA = "fedimpro-lambda"  # in CONFIG: the weight of the loss on sampled features this round
