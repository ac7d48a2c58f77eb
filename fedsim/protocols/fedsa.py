"""FedSA's protocol (``strategies/fedsa.py``, ``clients/fedsa.py``): the phases a train message names."""

TEACHER, SELECT, AMALGAMATE = "teacher", "select", "amalgamate"
PROBE = "probe"  # the student's probe images and task labels, sent with the select and amalgamate phases (ArrayRecord)
