"""Azurite and the Batch emulator as child processes (local mode)."""
