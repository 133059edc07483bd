"""The compute-node script: count a file's words exactly, in bounded memory, and upload the result.

Imports only the standard library and azure-storage-blob (aio), so it can run as a zipapp on a node.
"""
