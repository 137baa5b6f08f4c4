"""The model catalogue: which public files SurgSora uses, which ComfyUI models sub-folder each goes in,
how to find them in a models folder, and how to download the known ones (only when asked).

The models folder follows ComfyUI's layout (so ``ComfyUI/models`` works as is)::

    sams/            sam_vit_{b,l,h}_*.pth                     Segment Anything v1
    depthanything/   depth_anything_v2_vit{s,b,l}.pth, *_fp16.safetensors, or a Hugging Face folder
    checkpoints/     svd_xt.safetensors (single file)   -- or --   diffusers/<folder with model_index.json>
    surgsora/        <adapter folder written by `python -m train`>, ckpt_iter_42000.pth.tar (optional CMP)

The CLI and the ComfyUI nodes both use :data:`KNOWN_FILES` and :func:`find_model`, so both front ends
name the same files and folders in their messages.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..atomic import atomic_output, describe_write_error
from .io import ModelFileError

__all__ = ["KnownFile", "KNOWN_FILES", "COMPONENTS", "find_model", "list_models", "best_model", "download_model",
           "corrupt_configs"]


# ================================================================================= model catalogue

@dataclass(frozen=True)
class KnownFile:
    """A public weights file users bring, where it goes, and where it can be fetched from."""

    name: str
    component: str
    folder: str  # ComfyUI models sub-folder
    repo_id: str | None = None  # Hugging Face repository
    repo_file: str | None = None  # path inside it
    url: str | None = None  # a direct https address (SAM is hosted by Meta, not on Hugging Face)
    size: int | None = None  # exact size in bytes when published
    gated: bool = False  # needs `huggingface-cli login` and accepting the licence on the model page
    sha256: str | None = None  # the full SHA-256 when it is known from a verifiable source
    # Only the ends of the SHA-256 are published in the tables we could check (ours: fixtures README).
    sha256_prefix: str | None = None
    sha256_suffix: str | None = None
    revision: str | None = None  # a pinned Hugging Face commit (None: the file's current commit, hash-checked)

    @property
    def source(self) -> str:
        if self.url:
            return self.url
        return f"https://huggingface.co/{self.repo_id}/blob/main/{self.repo_file}"


def _sam(name, size, sha_prefix, sha_suffix):
    return KnownFile(name, "sam", "sams", url=f"https://dl.fbaipublicfiles.com/segment_anything/{name}", size=size,
                     sha256_prefix=sha_prefix, sha256_suffix=sha_suffix)


def _dav2(name, repo, repo_file=None):
    return KnownFile(name, "depth", "depthanything", repo_id=repo, repo_file=repo_file or name)


_DAV2_REPOS = {"s": "Small", "b": "Base", "l": "Large"}

# Preferred first within each component (best quality first).
KNOWN_FILES: dict[str, KnownFile] = {f.name: f for f in [
    _sam("sam_vit_h_4b8939.pth", 2_564_550_879, "a7bf3b02", "262e"),
    _sam("sam_vit_l_0b3195.pth", 1_249_524_607, "3adcc431", "a622"),
    _sam("sam_vit_b_01ec64.pth", 375_042_383, "ec2df627", "c912"),
    *[_dav2(f"depth_anything_v2_vit{k}.pth", f"depth-anything/Depth-Anything-V2-{v}") for k, v in
      (("l", "Large"), ("b", "Base"), ("s", "Small"))],
    *[_dav2(f"depth_anything_v2_vit{k}_{p}.safetensors", "Kijai/DepthAnythingV2-safetensors")
      for k in "lbs" for p in ("fp16", "fp32")],
    KnownFile("svd_xt.safetensors", "svd", "checkpoints", "stabilityai/stable-video-diffusion-img2vid-xt",
              "svd_xt.safetensors", gated=True),
    KnownFile("svd_xt_1_1.safetensors", "svd", "checkpoints", "stabilityai/stable-video-diffusion-img2vid-xt-1-1",
              "svd_xt_1_1.safetensors", gated=True),
    KnownFile("svd.safetensors", "svd", "checkpoints", "stabilityai/stable-video-diffusion-img2vid",
              "svd.safetensors", gated=True),
    # MOFA-Video-Traj's released ControlNet (ckpts/controlnet); without its config.json the SVD-xt widths apply.
    KnownFile("mofa_traj_controlnet.safetensors", "adapter", "surgsora", "MyNiuuu/MOFA-Video-Traj",
              "ckpts/controlnet/diffusion_pytorch_model.safetensors"),
    KnownFile("ckpt_iter_42000.pth.tar", "cmp", "surgsora", "MyNiuuu/MOFA-Video-Traj",
              "models/cmp/experiments/semiauto_annot/resnet50_vip+mpii_liteflow/checkpoints/ckpt_iter_42000.pth.tar"),
]}

# component -> (models sub-folders searched, file extensions, what to put there)
COMPONENTS = {
    "sam": (("sams",), (".pth", ".pt", ".safetensors"),
            "a Segment Anything v1 checkpoint (sam_vit_h_4b8939.pth, sam_vit_l_0b3195.pth or sam_vit_b_01ec64.pth)"),
    "depth": (("depthanything",), (".pth", ".pt", ".safetensors", ".bin"),
              "Depth Anything V2 (depth_anything_v2_vitl.pth, a *_fp16.safetensors, or a Hugging Face folder)"),
    "svd": (("checkpoints", "diffusers"), (".safetensors", ".ckpt", ".pt", ".pth"),
            "Stable Video Diffusion: svd_xt.safetensors in checkpoints/, or a diffusers folder in diffusers/"),
    "adapter": (("surgsora",), (".safetensors",),
                "a SurgSora adapter folder (config.json + diffusion_pytorch_model.safetensors) written by "
                "`python -m train`, or MOFA-Video-Traj's ControlNet (its ckpts/controlnet folder, or "
                "mofa_traj_controlnet.safetensors)"),
    "cmp": (("surgsora",), (".tar", ".pth", ".pt", ".safetensors"),
            "the MOFA-Video CMP trajectory decoder ckpt_iter_42000.pth.tar (optional: the analytic decoder needs "
            "no weights)"),
    "raft": (("optical_flow",), (".pth", ".pt"), "torchvision RAFT-Large weights (raft_large_C_T_SKHT_V2-ff5fadd5.pth)"),
}


def _is_adapter_folder(path: Path) -> bool:
    from .adapters import adapter_kind

    return adapter_kind(path) is not None  # a SurgSora adapter or MOFA-Video-Traj's ControlNet folder


def _is_svd_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def _is_hf_depth_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def _is_adapter_file(path: Path) -> bool:
    from .adapters import adapter_kind

    return path.suffix == ".safetensors" and adapter_kind(path) is not None


_FOLDER_TEST = {"adapter": _is_adapter_folder, "svd": _is_svd_folder, "depth": _is_hf_depth_folder}


def list_models(roots: Sequence[str | os.PathLike], component: str) -> list[str]:
    """Names (relative to a root, ``/`` separated) of the files or model folders of ``component`` in ``roots``.

    Model folders (adapter, diffusers SVD, Hugging Face depth) are listed as folders and not descended
    into; everything else is a file with one of the component's extensions. Hidden entries are skipped.
    """
    exts = COMPONENTS[component][1]
    is_folder = _FOLDER_TEST.get(component)
    names: set[str] = set()
    for root, here, dirnames, filenames in _walk(roots):
        rel = here.relative_to(root)
        if len(rel.parts) > 4:
            dirnames[:] = []
            continue
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            if is_folder is not None and is_folder(here / d):
                names.add((rel / d).as_posix())
            elif not ((here / d / "config.json").is_file() or (here / d / "model_index.json").is_file()):
                keep.append(d)  # never look inside another kind of model folder
        dirnames[:] = keep
        for f in filenames:
            if component == "adapter" and not _is_adapter_file(here / f):
                continue
            if not f.startswith(".") and f.lower().endswith(exts) and not f.endswith(".partial"):
                names.add((rel / f).as_posix())
    return sorted(names)


def _walk(roots: Sequence[str | os.PathLike]):
    """(root, folder, its sub-folder names, its file names) for every folder under the existing ``roots``,
    links followed; callers prune the walk by editing the sub-folder list in place, as with ``os.walk``."""
    for root in roots:
        root = Path(root)
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                yield root, Path(dirpath), dirnames, filenames


def corrupt_configs(roots: Sequence[str | os.PathLike], depth: int = 2) -> list[Path]:
    """``config.json`` / ``model_index.json`` files under ``roots`` that are not valid JSON objects.

    A model folder with such a file is not listed by :func:`list_models`; front ends name these files so
    a corrupt config is reported as corrupt, not as a missing model.
    """
    import json

    bad = []
    for root, here, dirnames, filenames in _walk(roots):
        if len(here.relative_to(root).parts) >= depth:
            dirnames[:] = []
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in ("config.json", "model_index.json"):
            if f in filenames:
                try:
                    ok = isinstance(json.loads((here / f).read_bytes().decode("utf-8-sig")), dict)
                except (OSError, ValueError):
                    ok = False
                if not ok:
                    bad.append(here / f)
    return sorted(bad)


def find_model(roots: Sequence[str | os.PathLike], name: str) -> Path | None:
    """The first ``root / name`` that exists (file or folder), refusing names that escape the root."""
    from .io import safe_join

    if "\x00" in name:
        raise ValueError(f"Invalid model name {name!r}: give a name inside the models folder.")
    for root in roots:
        try:
            path = safe_join(root, name)
        except ValueError:
            raise ValueError(f"Invalid model name {name!r}: give a name inside the models folder.") from None
        if path.exists():
            return path
    return None


def best_model(names: list[str], component: str) -> str | None:
    """The preferred model among ``names``: catalogue order first (best quality), then alphabetical."""
    if not names:
        return None
    order = [k for k, f in KNOWN_FILES.items() if f.component == component]
    by_base = {Path(n).name: n for n in names}
    for k in order:
        if k in by_base:
            return by_base[k]
    return names[0]


# ================================================================================= downloads

def _progress_tqdm(callback: Callable[[int, int], None] | None):
    """A tqdm class that also reports (done, total) bytes to ``callback`` (the ComfyUI progress bar)."""
    from tqdm.auto import tqdm

    if callback is None:
        return tqdm

    class _Tqdm(tqdm):
        def update(self, n=1):
            out = super().update(n)
            if self.total:
                callback(int(self.n), int(self.total))
            return out

    return _Tqdm


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fetch_url(url: str, dest: Path, total: int, tqdm_cls) -> None:
    """Stream ``url`` into ``dest`` (the network step; tests replace it)."""
    with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 (fixed https address from the catalogue)
        total = int(r.headers.get("Content-Length") or 0) or total
        with open(dest, "wb") as f, tqdm_cls(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))


def _fetch_hf(known: KnownFile, revision: str | None, dest: Path, tqdm_cls) -> str | None:
    """Download one Hub file at ``revision`` into ``dest`` (the network step; tests replace ``hf_hub_download``).

    Returns the SHA-256 the Hub reported for it (the LFS etag, recorded by ``hf_hub_download`` in the
    local folder's download metadata), or None when it reported none.
    """
    import inspect

    import huggingface_hub

    staging = Path(tempfile.mkdtemp(prefix=".surgsora-download-", dir=dest.parent))
    try:
        kwargs = {}
        if "tqdm_class" in inspect.signature(huggingface_hub.hf_hub_download).parameters:
            kwargs["tqdm_class"] = tqdm_cls
        if revision:
            kwargs["revision"] = revision
        got = huggingface_hub.hf_hub_download(known.repo_id, known.repo_file, local_dir=staging, **kwargs)
        sha = None
        try:
            from huggingface_hub._local_folder import read_download_metadata

            meta = read_download_metadata(staging, known.repo_file)
            etag = (meta.etag if meta else "").strip('"').lower()
            sha = etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None
        except (ImportError, AttributeError, OSError):
            sha = None
        os.replace(got, dest)
        return sha
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _verify(known: KnownFile, path: Path, expected_sha: str | None) -> None:
    """Size and SHA-256 checks of a finished download; ModelFileError naming what differs."""
    got_size = path.stat().st_size
    if known.size and got_size != known.size:
        raise ModelFileError(f"The download of {known.name} is {got_size:,} bytes instead of {known.size:,}; it was "
                             "cut short or changed upstream. Try again.")
    digest = _sha256(path)
    expected = (known.sha256 or expected_sha or "").lower()
    ok = True
    if expected:
        ok = digest == expected
    if known.sha256_prefix:
        ok = ok and digest.startswith(known.sha256_prefix.lower())
    if known.sha256_suffix:
        ok = ok and digest.endswith(known.sha256_suffix.lower())
    if not ok:
        want = expected or f"{known.sha256_prefix or ''}...{known.sha256_suffix or ''}"
        raise ModelFileError(f"The download of {known.name} has SHA-256 {digest}, not the published {want}; it is "
                             "corrupt or not the file SurgSora expects, so it was deleted. Try again, or download it "
                             f"yourself from {known.source}.")


def download_model(name: str, folder: str | os.PathLike,
                   progress: Callable[[int, int], None] | None = None) -> Path:
    """Download the known file ``name`` into ``folder`` (created), with a progress bar; returns its path.

    Only names in :data:`KNOWN_FILES` can be downloaded (no free-form URLs), and only when asked: nothing
    else in SurgSora touches the network. The file is written under a temporary name in ``folder`` and
    renamed only after its size and SHA-256 check out (SAM: the published size and the published ends of its
    SHA-256; Hugging Face files: the SHA-256 the Hub reports for the file downloaded (its LFS etag), or a
    pinned ``revision``). A failed, interrupted or mismatching download leaves nothing behind.
    """
    from .io import ModelFileError

    known = KNOWN_FILES.get(Path(name).name)
    if known is None:
        raise ModelFileError(f"{name} is not a file SurgSora knows how to download; known files: "
                             f"{', '.join(sorted(KNOWN_FILES))}.")
    folder = Path(folder)
    target = folder / known.name
    if target.is_file():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelFileError(f"Could not create the folder {folder} for {known.name} ({e.strerror or e}); choose a "
                             "models folder you can write to.") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ModelFileError(f"The folder {folder} is not writable; choose a models folder you can write to.")
    tqdm_cls = _progress_tqdm(progress)
    try:
        with atomic_output(target) as tmp:  # any failure, including Ctrl-C: no partial file left
            expected = None
            if known.url:
                _fetch_url(known.url, tmp, known.size or 0, tqdm_cls)
            else:
                expected = _fetch_hf(known, known.revision, tmp, tqdm_cls)
                if expected is None and not (known.sha256 or known.revision):
                    raise ModelFileError(f"The Hub reported no SHA-256 for {known.name}, so the download could not "
                                         f"be verified and was deleted; download it yourself from {known.source} and "
                                         f"put it in {folder}.")
            _verify(known, tmp, expected)
    except ModelFileError:
        raise
    except OSError as e:
        if describe_write_error(e) is not None:  # a full disk: the caller says so (nothing was left behind)
            raise
        raise _download_error(known, folder, e) from None
    except Exception as e:  # network, HTTP, auth: one sentence with the way out
        raise _download_error(known, folder, e) from None
    return target


def _download_error(known: KnownFile, folder: Path, e: Exception) -> Exception:
    from .io import ModelFileError

    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    gated = (" It is a gated model: accept its licence on the model page and run `huggingface-cli login` "
             "first.") if known.gated else ""
    return ModelFileError(f"Could not download {known.name} from {known.source} ({first}).{gated} "
                          f"Download it yourself and put it in {folder}.")
