"""Where an experiment's state lives between steps: a file, a ConfigMap, or a SQL database."""
