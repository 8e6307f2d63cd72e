"""Where trials run: the backend interface and its implementations."""
