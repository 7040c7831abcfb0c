"""canary-serve's command-line entry point (`canary`), kept in a package whose name nobody else uses."""
