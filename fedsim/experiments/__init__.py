"""Experiments: sweeps over configs (one process per run) and reports over run directories.

A run directory is the unit; a sweep is a folder of run directories plus ``manifest.json``; a
report is a function of run directories only (group by config difference, pair by seed).
"""
