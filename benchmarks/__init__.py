"""Side-by-side measurements; every claim is a ratio against a baseline measured in the same run."""
