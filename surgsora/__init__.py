"""SurgSora: motion-controllable surgical video generation, as a pure-PyTorch library.

Main entry points::

    from surgsora import SurgSoraAdapter, SurgSoraPipeline
    from surgsora.splat import forward_splat

The heavy classes are imported lazily so that light modules (splatting, tracks, I/O) load fast.
"""

__version__ = "0.1.0"

_LAZY = {
    "SurgSoraAdapter": ("surgsora.adapter", "SurgSoraAdapter"),
    "SurgSoraPipeline": ("surgsora.pipeline", "SurgSoraPipeline"),
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'surgsora' has no attribute {name!r}")
