"""SurgSora: motion-controllable surgical video generation, as a pure-PyTorch library.

Main entry points::

    from surgsora import SurgSoraAdapter, SurgSoraPipeline, forward_splat

The package follows the pipeline's stages, one folder each:

* ``perception/`` -- SAM features and masks, Depth Anything V2 depth;
* ``motion/``     -- the Trajectory Controller: tracks, CMP and analytic decoders, optical flow, splatting, preview;
* ``model/``      -- the adapter and its parts: DSI, DFM + MSF, trunk, UNet forward with residuals;
* ``sampling/``   -- the pipeline;
* ``loading/``    -- checkpoint formats, conversions, warm starts, the model catalogue;
* ``eval/``       -- the evaluation suite (``python -m surgsora.eval``).

``cli.py`` is ``python -m surgsora``; ``video_io.py`` reads and writes videos; ``tiny.py`` builds tiny
configurations of the real architectures for tests and smoke runs. Names are imported lazily so that
``import surgsora`` stays light.
"""

__version__ = "0.1.0"

_LAZY = {
    "SurgSoraAdapter": ("surgsora.model.adapter", "SurgSoraAdapter"),
    "SurgSoraPipeline": ("surgsora.sampling.pipeline", "SurgSoraPipeline"),
    "forward_splat": ("surgsora.motion.splat", "forward_splat"),
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'surgsora' has no attribute {name!r}")
