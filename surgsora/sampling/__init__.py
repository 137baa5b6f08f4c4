"""Sampling: SVD image-to-video steered by an adapter and/or a dual-clock motion signal.

* :mod:`.pipeline` -- :class:`~.pipeline.SurgSoraPipeline`, diffusers' SVD pipeline in pieces (first frame,
  conditions, motion signal, denoising loop, chunked decoding), with the adapter and dual-clock sampling.
* :mod:`.generate` -- the end-to-end composition: :func:`~.generate.sample` (pipeline + settings -> latents, what
  the ComfyUI sampler node runs) and :func:`~.generate.generate` (frame + tracks -> video, what ``python -m
  surgsora generate`` and ``python -m train sample`` run).
* :mod:`.dual_clock` -- Time-to-Move's step indices and the rules for the motion signal and mask.
* :mod:`.settings` -- torch-free: the sampling settings and their rules (:func:`~.settings.check_settings`), and
  the video size SVD can generate.
* :mod:`.conditioning` -- SVD's image conditioning written once (time ids, CLIP input, noise augmentation).
"""
