"""A stored cell's trained network: rebuilt from the cell's config by its method and loaded from its model.pt.

The results store (:mod:`hashbench.store.results`) verifies model.pt against the cell's record and knows no method;
rebuilding the network and loading the weights into it is done here.
"""

from __future__ import annotations

import pickle
import zipfile

import torch
from torch import nn

from hashbench.model.method import MethodContext
from hashbench.model.registry import REGISTRY
from hashbench.store.results import Cell, CellError


def load_trained_network(cell: Cell, device: str = "cpu") -> nn.Module:
    """The cell's trained network, rebuilt from its config and loaded from its verified model.pt (weights only, never
    code), on ``device`` and in eval mode."""
    config = cell.config
    method_cls = REGISTRY.get(config.method)
    context = MethodContext(
        config.bits,
        len(cell.class_names),
        len(cell.codes()["database_ids"]),
        config.options,
        config.seed,
        config.image_size,
    )
    network, _ = method_cls(context).build(config.run_backbone)  # random init: the cell's weights replace it
    model = cell.verified_model_path()
    try:
        state = torch.load(model, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "network" in state and "cell" in state:  # model.pt carries its cell's identity
            if state["cell"] != cell.identity:
                raise CellError(f"{model} belongs to another cell ({state['cell']}); re-run the cell with --force")
            state = state["network"]
        network.load_state_dict(state)
    except FileNotFoundError:
        raise CellError(
            f"{model} is missing: the cell's trained weights were not kept, so it cannot encode new images; re-run the cell with --force"
        ) from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise CellError(
            f"{model} cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); re-run the cell with --force"
        ) from None
    return network.to(device).eval()
