"""One reconcile step and the interfaces it needs (trial backend, trial metrics, state, status)."""
