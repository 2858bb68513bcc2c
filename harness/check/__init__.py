"""Is the answer right: reference executors and the output comparison."""
