"""Process trees from /proc: what `fedsim client` stops when its run ends."""

import subprocess
import sys

from fedsim.deploy.launch import stop_process_tree
from fedsim.processes import descendants, running


def test_a_process_tree_is_found_and_stopped_whole():
    """A child that starts a grandchild (as a SuperNode starts ClientApps): both are listed, and
    stopping the child leaves neither running."""
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(100):
            tree = descendants(child.pid)
            if tree:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert len(tree) == 1 and running(tree[0])
        stop_process_tree(child, timeout=5)
        assert child.poll() is not None and not running(tree[0])
    finally:
        if child.poll() is None:
            child.kill()
