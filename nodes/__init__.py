"""ComfyUI node classes (thin wrappers over ``surgsora``), one file per family.

* ``perception``: Load SAM, SAM Segment Features, SAM Masks from Clicks, Load Depth Anything, Depth.
* ``trajectory``: Trajectories (with the click-to-draw editor in ``web/``), Load Trajectory Decoder,
  Trajectories to Flow, Optical Flow from Clip, Motion Preview, Motion Signal (dual-clock).
* ``generation``: Load Adapter (SurgSora or MOFA-Video-Traj), DSI Encode, DFM Warp + MSF Fuse, Load SVD,
  SVD Sampler (adapter and/or dual-clock), Decode.
* ``core_svd``: SurgSora Apply (SVD), SurgSora SVD Conditioning and SurgSora Dual-Clock Guider, for ComfyUI's
  own SVD model and samplers.
* ``cosmos``: Load Cosmos-H-Surgical, Cosmos Text Encode, Cosmos Image to Video (NVIDIA's surgical video model
  as ComfyUI's own Cosmos Predict2 model, driven by the Dual-Clock Guider).

Importing this package registers the model folders with ComfyUI's ``folder_paths`` (when ComfyUI is
there) and nothing else: no model is loaded or downloaded until a node runs.
"""

from . import core_svd, cosmos, generation, perception, trajectory
from .models import register_folders

register_folders()

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _family in (perception, trajectory, generation, core_svd, cosmos):
    NODE_CLASS_MAPPINGS.update(_family.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_family.NODE_DISPLAY_NAME_MAPPINGS)

# The node's docstring is its description in the ComfyUI node library, which shows text as is: the
# reST back-ticks go.
for _cls in NODE_CLASS_MAPPINGS.values():
    if "DESCRIPTION" not in _cls.__dict__ and _cls.__doc__:
        _cls.DESCRIPTION = " ".join(_cls.__doc__.replace("`", "").split())

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
