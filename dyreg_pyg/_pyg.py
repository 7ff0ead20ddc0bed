"""The first import of PyG, without a warning that is PyG's, not the user's.

``torch_geometric.nn.pool`` calls ``torch.jit.script`` when it is imported, and torch >= 2.10
answers every such call with a ``FutureWarning`` ("`torch.jit.script` is deprecated"): every
command and every ``import dyreg_pyg`` printed it although nothing here scripts anything. The
filter holds inside ``warnings.catch_warnings`` for this one import only, so the user's own
warning filters are left exactly as they were and a ``torch.jit.script`` call of theirs still
warns.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                            category=FutureWarning)
    import torch_geometric.nn  # noqa: F401
