"""The policy's adapters for one weight vector, as one ordinary peft LoRA adapter.

`experts` conditioning mixes the LoRA adapters row by row (`Policy`, `RowMixer`): for a weight w every target
module adds

    Δ(w) x = Σ_a c_a(w) · s_a · B_a A_a x,    c = 1 for the shared adapter, w_k for objective k's expert,

with s_a peft's scaling of adapter a (lora_alpha / r). That sum is exactly one LoRA of rank Σ_a r_a:

    A(w) = [A_1; A_2; …]          (the A's stacked along the rank: R × in)
    B(w) = [c_1 s_1 B_1, c_2 s_2 B_2, …]   (the B's side by side, each scaled: out × R)

so B(w) A(w) = Σ_a c_a s_a B_a A_a. The scalings are folded into B and the adapter is written with
lora_alpha = r = R, a scaling of exactly 1 that any reader (peft, vLLM) applies the same way, whatever the
policy's alpha, per-module alpha patterns or rsLoRA. A `tag` policy has one adapter with c = 1: the same code
writes it unchanged but for the folded scaling.

Nothing here needs vLLM: any engine that serves peft adapters can serve a mixed policy this way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from meal_core.policy import Policy

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def mixing_coefficients(policy: Policy, weights: ArrayLike) -> np.ndarray:
    """(rows, adapters): how much of each of `policy.adapters` every row gets. A tag policy's one adapter is
    always whole (the weights reach it as text)."""
    rows = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if not policy.uses_experts:
        return np.ones((len(rows), len(policy.adapters)))
    return policy.mixing_coefficients(rows).double().cpu().numpy()


def mixing_key(coefficients: np.ndarray) -> tuple[float, ...]:
    """A hashable form of one row of coefficients: rows that mix alike share one adapter (an evaluation grid's
    repeated weights, every row of a tag policy). Rounded so that float noise in the caller's normalisation does
    not split what is meant to be one weight."""
    return tuple(float(c) for c in np.round(np.asarray(coefficients, dtype=np.float64), 10))


def mixed_rank(policy: Policy) -> int:
    """The rank of one mixed adapter: the adapters' ranks summed (K·r, or (K+1)·r with a shared adapter)."""
    return sum(_adapter_rank(policy, name) for name in policy.adapters)


def _adapter_rank(policy: Policy, name: str) -> int:
    config: Any = policy.model.peft_config[name]
    return int(config.r)


def mixed_state_dict(policy: Policy, coefficients: ArrayLike) -> dict[str, torch.Tensor]:
    """peft's saved keys (`base_model.model.<module>.lora_A.weight` / `.lora_B.weight`), fp32, on the CPU."""
    from peft.tuners.lora import LoraLayer

    c = np.asarray(coefficients, dtype=np.float64).reshape(-1)
    if len(c) != len(policy.adapters):
        raise ValueError(f"{len(policy.adapters)} adapters but {len(c)} coefficients")
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, module in policy.model.named_modules():
            if not isinstance(module, LoraLayer) or policy.adapters[0] not in module.lora_A:
                continue
            lora_a: Any = module.lora_A
            lora_b: Any = module.lora_B
            a = torch.cat([lora_a[adapter].weight.float() for adapter in policy.adapters], dim=0)
            b = torch.cat(
                [
                    lora_b[adapter].weight.float() * float(coefficient * module.scaling[adapter])
                    for adapter, coefficient in zip(policy.adapters, c, strict=True)
                ],
                dim=1,
            )
            state[f"{name}.lora_A.weight"] = a.cpu().contiguous()
            state[f"{name}.lora_B.weight"] = b.cpu().contiguous()
    if not state:
        raise ValueError("the policy has no LoRA layers")
    return state


def adapter_config(policy: Policy) -> dict[str, Any]:
    """adapter_config.json of a mixed adapter: rank R, alpha R (scaling 1, folded into B), the policy's targets."""
    first: Any = policy.model.peft_config[policy.adapters[0]]
    rank = mixed_rank(policy)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": first.base_model_name_or_path,
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "use_rslora": False,
        "use_dora": False,
        "bias": "none",
        "fan_in_fan_out": bool(first.fan_in_fan_out),
        # peft keeps a list of names as a set; a regular expression stays a string.
        "target_modules": (
            first.target_modules if isinstance(first.target_modules, str) else sorted(first.target_modules)
        ),
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
    }


def write_mixed_adapter(policy: Policy, coefficients: ArrayLike, directory: Path) -> Path:
    """Write the policy's adapters mixed by `coefficients` (one row of `mixing_coefficients`) as a peft adapter
    folder; returns the folder. Written into a staging name and renamed, so a reader never sees half an adapter."""
    from safetensors.torch import save_file

    directory = Path(directory)
    staging = directory.with_name(directory.name + ".partial")
    staging.mkdir(parents=True, exist_ok=False)
    save_file(mixed_state_dict(policy, coefficients), str(staging / WEIGHTS_FILE))
    (staging / CONFIG_FILE).write_text(json.dumps(adapter_config(policy), indent=2))
    staging.rename(directory)
    return directory
