"""Checkpoint formats, conversions and warm starts; where model files live.

* :mod:`.io` -- safe weight reading (safetensors, ``torch.load(weights_only=True)``) with one-sentence errors.
* :mod:`.svd_checkpoint` -- SVD from the Stability single file ComfyUI users have, or a diffusers folder.
* :mod:`.warm_start` -- initialise a SurgSora adapter from MOFA-Video-Traj's released ControlNet.
* :mod:`.catalogue` -- the known public files, the ComfyUI models sub-folder of each, search and downloads.
"""
