"""The optimizer: the Ax engine (the only module that imports Ax), its worker thread, Pareto arithmetic."""
