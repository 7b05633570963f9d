"""FLOP counting that sees PyTorch's CPU attention kernel.

    with flop_counter() as counter:
        model(...)
    counter.get_total_flops()

torch's FlopCounterMode has no formula for `aten._scaled_dot_product_flash_attention_for_cpu`
(what SDPA runs on CPU), so attention would count 0: this adds it and its backward with torch's
own SDPA formulas, and a CPU count with `attention="sdpa"` equals the eager one (tests/test_speed.py).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["flop_counter"]


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                       **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode (no display) that also counts the CPU attention kernel."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
