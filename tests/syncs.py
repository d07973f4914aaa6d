"""Count, on the CPU, the calls that would make the host wait for a GPU: a stand-in for
`torch.cuda.set_sync_debug_mode("warn")` on a machine without one.

Counted: reading a tensor's values on the host (`item`, `tolist`, `bool`/`int`/`float`, `.cpu()`), ops
whose output size depends on the values (`unique`, `nonzero`, boolean-mask indexing), and tensors made
on a device from host data (`torch.tensor(..., device=...)`, `torch.as_tensor(..., device=...)`: a
blocking copy from pageable memory). On a CPU these cost nothing, so the count says where a GPU would
stall, not what it costs here. Not counted: `.numpy()` (it refuses a GPU tensor, so only host data
reaches it), `nonzero_static` (its size is given) and non-blocking copies.
"""
from __future__ import annotations

import collections
import contextlib

import torch

_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "unique", "nonzero")
_FUNCTIONS = ("unique", "nonzero")
_MADE_ON_DEVICE = ("tensor", "as_tensor")


@contextlib.contextmanager
def counted_syncs(monkeypatch):
    """Yields a Counter of call name -> calls made inside the block."""
    counts = collections.Counter()

    def wrap(name, fn, when=lambda *a, **k: True):
        def counted(*args, **kwargs):
            if when(*args, **kwargs):
                counts[name] += 1
            return fn(*args, **kwargs)
        return counted

    with monkeypatch.context() as m:
        for name in _METHODS:
            m.setattr(torch.Tensor, name, wrap(f"Tensor.{name}", getattr(torch.Tensor, name)))
        for name in _FUNCTIONS:
            m.setattr(torch, name, wrap(f"torch.{name}", getattr(torch, name)))
        for name in _MADE_ON_DEVICE:
            m.setattr(torch, name, wrap(f"torch.{name}(device=)", getattr(torch, name),
                                        lambda *a, **k: k.get("device") is not None))
        getitem = torch.Tensor.__getitem__
        m.setattr(torch.Tensor, "__getitem__", wrap(
            "mask indexing", getitem, lambda self, i: any(torch.is_tensor(t) and t.dtype == torch.bool
                                                          for t in (i if isinstance(i, tuple) else (i,)))))
        yield counts
