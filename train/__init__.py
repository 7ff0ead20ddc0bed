"""Training, evaluation and visualisation of DyReg-GNN video models (``python -m train``)."""
