"""FedSA's protocol (``strategies/fedsa.py``, ``clients/fedsa.py``): the phases a train message names."""

TEACHER, SELECT, AMALGAMATE = "teacher", "select", "amalgamate"
PROBE = "probe"  # the student's probe images and task labels, sent with the select and amalgamate phases (ArrayRecord)
PHASE = "fedsa-phase"  # in CONFIG: TEACHER, SELECT or AMALGAMATE
TEACHER_ACCURACY = "teacher-accuracy"  # in a TEACHER reply's METRICS: the teacher's accuracy on its own test data
SIMILARITY_PREFIX = "similarity-"  # in a SELECT reply's METRICS: one key per task, see similarity_key


def similarity_key(task: int) -> str:
    """The METRICS key of a teacher's saliency similarity to the student on ``task``."""
    return f"{SIMILARITY_PREFIX}{task}"
