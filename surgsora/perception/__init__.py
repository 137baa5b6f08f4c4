"""Perception front-ends of the Dual Semantic Injector: what SurgSora sees in the first frame.

* :mod:`.sam` -- Segment Anything v1: image features ``[B, 256, 64, 64]`` and masks from clicks or boxes.
* :mod:`.depth` -- Depth Anything V2: relative disparity ``[B, 1, H, W]`` normalised per image to [0, 1].
"""
