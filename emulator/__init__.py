"""A local Azure Batch data-plane service that the real azure-batch SDK drives over HTTP.

Start it with `python -m emulator`; see docs/emulator.md for flags, behaviour and limits.
"""
