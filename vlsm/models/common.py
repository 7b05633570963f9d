"""Helpers every model builder shares: seeded initialisation (so that a frozen tower is
rebuilt bit-identically from its spec; docs/design.md, "One trial"), weight files, input checks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from vlsm.model_registry import INIT_SEED

__all__ = ["check_forward_inputs", "hub_files_only", "is_hub_id", "load_state_dict_file", "load_strict",
           "seeded_init"]


@contextmanager
def seeded_init(seed: int = INIT_SEED) -> Iterator[None]:
    """Run the block with torch's CPU RNG seeded in a fork: the caller's RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def is_hub_id(value: str) -> bool:
    """True for strings shaped like a Hugging Face repo id ("owner/name" or "name")."""
    if value.startswith(("/", ".", "~")) or "\\" in value:
        return False
    parts = value.split("/")
    return len(parts) <= 2 and all(parts) and not value.endswith((".pt", ".pth", ".bin"))


def hub_files_only(repo_id: str, filename: str, option: str) -> bool:
    """True when `filename` of the repo is in the local Hugging Face cache (read it offline).
    Else ValueError naming `option` at once when the hub is off or unreachable (a quick
    connection test: the hub client would retry for minutes)."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, filename), str):
        return True
    advice = f"give a local folder as {option}, or run once where the hub is reachable to cache it"
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"{option}={repo_id!r}: not in the local Hugging Face cache and the hub is off "
                         f"(HF_HUB_OFFLINE); {advice}")
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", constants.ENDPOINT))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=5).close()
    except OSError as err:
        raise ValueError(f"{option}={repo_id!r}: not in the local Hugging Face cache, and "
                         f"{endpoint.hostname} cannot be reached ({err}); {advice}") from None
    return False


def load_state_dict_file(path: str | Path, option: str) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` or torch file (plain or under "state_dict"; torch files
    with `weights_only=True`), a DataParallel `module.` prefix stripped; errors name `option`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"{option}={str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: object = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several unrelated types here
            raise ValueError(f"{option}={str(path)!r}: not a torch weights file loadable with "
                             f"weights_only=True ({type(err).__name__}: {err})") from err
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{option}={str(path)!r}: expected a mapping of tensor names to tensors "
                         f"(optionally under 'state_dict')")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every tensor of `module` from `state`; any mismatch raises naming the tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or wrong:
        parts = [f"{title} ({len(items)}): {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}"
                 for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                 if items]
        raise ValueError(f"{source}: tensors do not match the model; " + "; ".join(parts))
    module.load_state_dict(dict(state), strict=True)


def check_forward_inputs(model_name: str, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor) -> None:
    """Shapes of the forward contract: (B, 3, H, W) images, (B, L) ids and mask."""
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise ValueError(f"{model_name} pixel_values: expected (B, 3, H, W), got {tuple(pixel_values.shape)}")
    b = pixel_values.shape[0]
    if input_ids.ndim != 2 or input_ids.shape[0] != b:
        raise ValueError(f"{model_name} input_ids: expected ({b}, L), got {tuple(input_ids.shape)}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"{model_name} attention_mask: expected the shape of input_ids "
                         f"{tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
