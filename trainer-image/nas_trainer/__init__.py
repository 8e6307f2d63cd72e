"""The reference trial program of nas-operator (PyTorch Lightning MLP, TensorBoard logging)."""
