"""The pipeline's frame: the stage table, the workdir layout (the one place for file names), atomic writes,
stores, locks, provenance and staleness, run/status, shards and torchrun.

Lowest wing above config: it knows stages by name only (the table names each runner as "wing.module:Class"),
so every other wing may use it. A new stage is one entry in stages.py plus its runner class, and its files
in layout.py.
"""
