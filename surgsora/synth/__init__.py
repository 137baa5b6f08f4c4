"""Labelled synthetic surgical video at scale: ``python -m surgsora synth``.

A job file (CSV or JSONL, one row per source frame and its trajectories) becomes a dataset folder with one clip
folder per (row, variant): the generated video, instance masks of the moved regions carried along the flow, the
flow itself, the tracks in ComfyUI's core TRACKS layout, and a ``meta.json`` (written last, with the checksums of the
other files: the clip's done marker). Composed from the library (:func:`surgsora.sampling.generate.generate`, the
models-folder policy, the trajectory readers, the splatting of the motion signal), never re-implemented here.

* :mod:`.jobs`     -- read and validate every row before any model loads; clip ids and seeds.
* :mod:`.variants` -- seeded jittered copies of the motion (direction and magnitude), anchors kept.
* :mod:`.labels`   -- instance masks, flow.npz, tracks.json, the follow score.
* :mod:`.clip`     -- one clip: generate, label, write every file atomically, meta.json last.
* :mod:`.dataset`  -- the dataset folder: identity, done clips, index merge, dataset card.
* :mod:`.run`      -- sharding over accelerate processes, models loaded once per process, progress.
* :mod:`.cli`      -- ``add_parser(subparsers)`` and ``run(args)``; ``python -m surgsora.synth`` runs it alone.
"""
