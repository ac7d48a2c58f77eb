"""Privacy evaluation: attacks on what clients share, defences, and leakage metrics.

``attacks/`` reconstruct data (or membership) from exactly what the server receives, ``defences/``
change what clients send, ``metrics.py`` scores reconstructions against the private originals.
"""
