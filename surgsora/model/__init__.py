"""The SurgSora adapter and its parts (a ControlNet-style branch beside a frozen SVD UNet).

* :mod:`.dsi` -- Dual Semantic Injector: RGB + SAM and depth + SAM processors and their encoders.
* :mod:`.dfm` -- Decoupled Flow Mapper (features forward-warped per frame and scale) and Multi-Scale Fusion.
* :mod:`.adapter` -- :class:`~surgsora.model.adapter.SurgSoraAdapter`: condition branch + trainable trunk.
* :mod:`.unet` -- the frozen SVD UNet's forward with each adapter residual added once.

MOFA-Video-Traj's constants (heads, semantics, time ids) are described in :mod:`surgsora.loading.mofa`;
``SurgSoraAdapter.from_mofa`` loads its released ControlNet through :mod:`surgsora.loading.warm_start`.
"""
