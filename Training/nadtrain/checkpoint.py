"""Training checkpoints without pickle: one safetensors file holding the model's and the optimizer's
tensors, with everything else (epoch, scheduler, scaler, history) as JSON in its metadata.

One file means one atomic ``os.replace``: a checkpoint is either the old one or the new one, never
half of each, even when the process is killed while writing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from notadiagnosis.atomic import atomic_path
from notadiagnosis.errors import InputError

FORMAT = "nadtrain-checkpoint/1"
_MODEL = "model."
_OPTIM = "optim."


class CheckpointError(InputError):
    """A checkpoint is missing, unreadable or from another run."""


def _json(value: Any) -> Any:
    """Make optimizer/scheduler state JSON-able (tuples -> lists, 0-d tensors -> numbers)."""
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    return value


def optimizer_state_to_flat(state: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (named ``optim.<param>.<key>``) and JSON."""
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Dict[str, Any]] = {}
    for param_id, per_param in state["state"].items():
        scalars[str(param_id)] = {}
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIM}{param_id}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars[str(param_id)][key] = _json(value)
    return tensors, {"param_groups": _json(state["param_groups"]), "scalars": scalars}


def optimizer_state_from_flat(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_flat` (tensors stay on CPU; ``load_state_dict`` moves them)."""
    state: Dict[int, Dict[str, Any]] = {int(k): dict(v) for k, v in meta["scalars"].items()}
    for name, tensor in tensors.items():
        param_id, key = name[len(_OPTIM):].split(".", 1)
        state.setdefault(int(param_id), {})[key] = tensor
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: Dict[str, Any]) -> None:
    """Write model + optimizer tensors and the JSON ``state`` atomically to ``path``."""
    path = Path(path)
    tensors = {_MODEL + k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = optimizer_state_to_flat(optimizer.state_dict())
    tensors.update(optim_tensors)
    metadata = {"format": FORMAT, "state": json.dumps(_json(state)), "optimizer": json.dumps(optim_meta)}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def load_checkpoint(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], Dict[str, Any]]:
    """(model state dict, optimizer state dict, JSON state) from a checkpoint written by this module."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; start without --resume.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not a nadtrain checkpoint; start without --resume.")
            model_state = {k[len(_MODEL):]: handle.get_tensor(k) for k in handle.keys() if k.startswith(_MODEL)}
            optim_tensors = {k: handle.get_tensor(k) for k in handle.keys() if k.startswith(_OPTIM)}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"checkpoint {path} is unreadable ({error}); delete it and start without --resume.") from None
    optimizer_state = optimizer_state_from_flat(optim_tensors, json.loads(metadata["optimizer"]))
    return model_state, optimizer_state, json.loads(metadata["state"])


def save_weights(path: Path, model: torch.nn.Module) -> None:
    """Model tensors only (the best epoch so far), written atomically."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
