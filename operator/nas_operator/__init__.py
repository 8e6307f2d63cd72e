"""nas-operator: multi-objective neural architecture search, locally or as a Kubernetes operator."""

__version__ = "0.1.0"
