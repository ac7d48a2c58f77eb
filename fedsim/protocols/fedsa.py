"""FedSA's protocol (``strategies/fedsa.py``, ``clients/fedsa.py``): the phases a train message names."""

TEACHER, SELECT, AMALGAMATE = "teacher", "select", "amalgamate"
