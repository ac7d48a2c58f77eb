"""The records and keys every algorithm's messages use (Flower ``RecordDict`` names and the keys
inside its records); an algorithm's own are in its module of :mod:`fedsim.protocols`."""

ARRAYS = "arrays"  # the model a message carries (ArrayRecord)
CONFIG = "config"  # instructions (ConfigRecord): SERVER_ROUND and the algorithm's keys
METRICS = "metrics"  # a reply's metrics (MetricRecord): NUM_EXAMPLES and the algorithm's
INFO = "info"  # a query reply: the client's facts (MetricRecord with CLIENT_ID, NUM_EXAMPLES)
PEER_RECORD = "shared"  # decentralized algorithms: the model a client shares with its peers (ArrayRecord)

SERVER_ROUND = "server-round"  # in CONFIG
NUM_EXAMPLES = "num-examples"  # in METRICS and INFO: the samples the reply stands for
CLIENT_ID = "client-id"  # in INFO
