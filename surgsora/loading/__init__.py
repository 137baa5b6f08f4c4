"""Checkpoint formats, conversions and warm starts; where model files live.

* :mod:`.files` -- torch-free: :class:`ModelFileError`, safetensors headers, ``config.json`` of a model folder.
* :mod:`.io` -- safe weight reading (safetensors, ``torch.load(weights_only=True)``) with one-sentence errors.
* :mod:`.mofa` -- torch-free: MOFA-Video-Traj's ControlNet described once (constants, the adapter config that
  runs it as published) and :func:`~surgsora.loading.mofa.adapter_kind`, which tells it from a SurgSora adapter.
* :mod:`.adapters` -- the one adapter loader (SurgSora adapter or MOFA's ControlNet) and its one-line description.
* :mod:`.warm_start` -- MOFA's tensors into a SurgSora adapter: warm start, or MOFA's ControlNet in MOFA mode.
* :mod:`.svd_checkpoint` -- SVD from the Stability single file ComfyUI users have, or a diffusers folder.
* :mod:`.catalogue` -- the known public files, the ComfyUI models sub-folder of each, search and downloads.
* :mod:`.models_folder` -- which files of a ComfyUI-style models folder a command uses.

No circle with the model (``surgsora.model``): :mod:`.files` and :mod:`.mofa` import only the standard
library, so the adapter class can take MOFA's constants from :mod:`.mofa`; ``SurgSoraAdapter.from_mofa`` calls
:mod:`.warm_start`, which is handed the class and never imports the model; :mod:`.adapters` imports the model
to load it.
"""
