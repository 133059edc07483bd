"""The process shell: services, clients, credential check, journal, signals; the pool keeper."""
