"""Thin operations over the Azure SDKs: clients, retry, SAS, blobs, pool, submit, monitor, collect."""
