"""End-to-end tests: the product as a user runs it (a package, so its modules share one running demo)."""
