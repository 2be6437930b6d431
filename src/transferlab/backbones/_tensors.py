"""Fine-tuned tensors of a network, shared by every family: their identity (a hash) and loading them into a freshly
built network."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from ..errors import TransferlabError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def tensors_sha256(state: dict[str, np.ndarray]) -> str:
    """sha256 over tensors' names, dtypes, shapes and values (in name order)."""
    h = hashlib.sha256()
    for name in sorted(state):
        arr = np.ascontiguousarray(state[name])
        h.update(f"{name}:{arr.dtype}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def load_tuned(module: torch.nn.Module, state: dict[str, np.ndarray], name: str) -> None:
    """Copy fine-tuned tensors into a freshly built network (every name must exist there, with its shape)."""
    import torch

    own = module.state_dict()
    bad = [k for k, v in state.items() if k not in own or tuple(own[k].shape) != tuple(np.shape(v))]
    if bad:
        raise TransferlabError(
            f"{name}: fine-tuned weights do not fit this network ({bad[0]!r}); the model is damaged or from "
            "another architecture, retrain it"
        )
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=False)
