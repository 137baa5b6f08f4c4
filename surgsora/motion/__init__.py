"""The Trajectory Controller and everything that moves pixels or features along optical flow.

* :mod:`.tracks` -- trajectory formats (editor, KJNodes, DragNUWA, core TRACKS) -> per-frame points -> sparse flow.
* :mod:`.analytic_flow`, :mod:`.cmp` -- sparse flow -> dense flow ``[B, T-1, 2, H, W]`` (weight-free mask-aware
  decoder, or MOFA-Video's CMP network); both share one interface.
* :mod:`.optical_flow` -- flow estimated from real frames (OpenCV DIS, RAFT), the paper's ground-truth mode.
* :mod:`.splat` -- pure-PyTorch forward (average) splatting and flow resizing, used by the DFM and the preview.
* :mod:`.preview`, :mod:`.flow_viz` -- the weight-free motion preview, flow colours and drawn tracks.
"""
