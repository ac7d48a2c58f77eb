"""Create test credentials for a fedsim deployment: a CA and SuperLink TLS certificate, and one
authentication key pair per SuperNode.

    python scripts/make_credentials.py --out credentials --hosts localhost 127.0.0.1 --nodes 3

writes credentials/tls/{ca.crt,ca.key,server.pem,server.key} and credentials/nodes/node-K{,.pub}.
Give `fedsim server` the folder (deploy.credentials=credentials) and each device its ca.crt and node key.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedsim.deploy.credentials import make_node_keys, make_tls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="credentials")
    parser.add_argument(
        "--hosts", nargs="+", default=["localhost", "127.0.0.1"], help="names/IPs the SuperLink is reached at"
    )
    parser.add_argument("--nodes", type=int, default=3, help="SuperNode key pairs to create")
    args = parser.parse_args()
    out = Path(args.out)
    tls = make_tls(out / "tls", args.hosts)
    keys = [make_node_keys(out / "nodes", f"node-{k}") for k in range(args.nodes)]
    print(f"TLS: {tls['ca.crt']} (give to every SuperNode), {tls['server.pem']}, {tls['server.key']}")
    print("SuperNode keys: " + ", ".join(str(private) for private, _ in keys) + " (public keys: .pub)")


if __name__ == "__main__":
    main()
