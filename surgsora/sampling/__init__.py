"""Sampling: :class:`~surgsora.sampling.pipeline.SurgSoraPipeline`, SVD image-to-video steered by an adapter."""
