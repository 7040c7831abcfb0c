"""canary-serve's models: artifacts on disk, the torch architectures, prediction, input parsing and faults."""
