"""The Trajectory Controller and everything that moves pixels or features along optical flow.

* :mod:`.tracks` -- trajectory formats (editor, KJNodes, DragNUWA, core TRACKS) -> per-frame points -> sparse flow.
* :mod:`.analytic_flow`, :mod:`.cmp` -- sparse flow -> dense flow ``[B, T-1, 2, H, W]`` (weight-free mask-aware
  decoder, or MOFA-Video's CMP network); both share one interface.
* :mod:`.optical_flow` -- flow estimated from real frames (OpenCV DIS, RAFT), the paper's ground-truth mode.
* :mod:`.splat` -- pure-PyTorch forward splatting (average and softmax) and flow resizing, used by the DFM, the
  preview and the motion signal.
* :mod:`.occlusion` -- who is in front (depth, region size or motion) and what lies behind (push-pull / Telea
  inpainting, backward warping): the pieces of the occlusion-aware motion signal.
* :mod:`.preview` -- the motion signal (the frame pushed along the flow, nearer wins, disocclusions filled, and
  the mask of what moves: the CLI preview, the Motion Preview node and dual-clock sampling's input) and the
  old average-splat preview.
* :mod:`.flow_viz` -- flow colours (Middlebury wheel) and trajectories drawn on frames.
"""
