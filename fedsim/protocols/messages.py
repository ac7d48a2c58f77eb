"""The records and keys every algorithm's messages use.

The records and keys every algorithm's messages use (Flower ``RecordDict`` names and the keys inside its
records); an algorithm's own are in its module of :mod:`fedsim.protocols`.
"""

ARRAYS = "arrays"  # the model a message carries (ArrayRecord)
CONFIG = "config"  # instructions (ConfigRecord): SERVER_ROUND and the algorithm's keys
METRICS = "metrics"  # a reply's metrics (MetricRecord): NUM_EXAMPLES and the algorithm's
INFO = "info"  # a query reply: the client's facts (MetricRecord with CLIENT_ID, NUM_EXAMPLES)
PEER_RECORD = "shared"  # decentralized algorithms: the model a client shares with its peers (ArrayRecord)

SERVER_ROUND = "server-round"  # in CONFIG
# in a train message's CONFIG: this round's local training, and the round of the server's last checkpoint
# (a client keeps its state files up to it, so that a resumed run finds the state of that round)
LR, LOCAL_EPOCHS, BATCH_SIZE, LAST_CHECKPOINT = "lr", "local-epochs", "batch-size", "last-checkpoint"
NUM_EXAMPLES = "num-examples"  # in METRICS and INFO: the samples the reply stands for
CLIENT_ID = "client-id"  # in INFO
ACCURACY, LOSS = "accuracy", "loss"  # in an evaluate reply's METRICS: on the client's test data
TRAIN_LOSS, NUM_STEPS = "train-loss", "num-steps"  # in a train reply's METRICS: its mean loss and optimizer steps
SUBSET_ACCURACY = "subset-accuracy"  # in an evaluate reply's METRICS: restricted to the client's own labels
