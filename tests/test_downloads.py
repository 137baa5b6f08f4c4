"""Downloads: explicit only, size + SHA-256 verified, and nothing left behind when they fail (no network:
the fetch step is replaced)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

import surgsora.loading.catalogue as cat
from surgsora.loading.io import ModelFileError

DATA = b"fake SAM weights " * 64
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def fake_sam(monkeypatch):
    """sam_vit_b_01ec64.pth as a small file whose published size and hash ends are those of DATA."""
    known = replace(cat.KNOWN_FILES["sam_vit_b_01ec64.pth"], size=len(DATA), sha256_prefix=SHA[:8],
                    sha256_suffix=SHA[-4:])
    monkeypatch.setitem(cat.KNOWN_FILES, known.name, known)
    return known


def _fetcher(payload, fail_after=None):
    def fetch(url, dest, total, tqdm_cls):
        with open(dest, "wb") as f:
            if fail_after is not None:
                f.write(payload[:fail_after])
                raise ConnectionResetError("connection reset by peer")
            f.write(payload)
    return fetch


def test_a_verified_download_lands_in_its_folder(tmp_path, fake_sam, monkeypatch):
    monkeypatch.setattr(cat, "_fetch_url", _fetcher(DATA))
    path = cat.download_model(fake_sam.name, tmp_path / "sams")
    assert path.read_bytes() == DATA and [p.name for p in (tmp_path / "sams").iterdir()] == [fake_sam.name]
    assert (path.stat().st_mode & 0o777) == 0o666 & ~_umask()  # readable by others as a plain file would be


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("payload, fail_after, words", [
    (DATA[:-1] + b"X", None, "SHA-256"),          # right size, wrong content
    (DATA[:100], None, "instead of"),             # cut short
    (DATA, 100, "connection reset"),              # the connection drops half-way
])
def test_a_bad_or_partial_download_leaves_nothing(tmp_path, fake_sam, monkeypatch, payload, fail_after, words):
    monkeypatch.setattr(cat, "_fetch_url", _fetcher(payload, fail_after))
    with pytest.raises(ModelFileError, match=words):
        cat.download_model(fake_sam.name, tmp_path / "sams")
    assert list((tmp_path / "sams").iterdir()) == []


def test_an_interrupted_download_leaves_nothing(tmp_path, fake_sam, monkeypatch):
    def fetch(url, dest, total, tqdm_cls):
        dest.write_bytes(DATA[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(cat, "_fetch_url", fetch)
    with pytest.raises(KeyboardInterrupt):
        cat.download_model(fake_sam.name, tmp_path / "sams")
    assert list((tmp_path / "sams").iterdir()) == []


def test_hub_files_are_checked_against_the_sha256_the_hub_reports(tmp_path, monkeypatch):
    def fetch(known, revision, dest, tqdm_cls):
        dest.write_bytes(DATA)
        return reported

    monkeypatch.setattr(cat, "_fetch_hf", fetch)
    name = "depth_anything_v2_vits.pth"
    reported = SHA
    assert cat.download_model(name, tmp_path / "a").read_bytes() == DATA
    reported = "0" * 64
    with pytest.raises(ModelFileError, match="SHA-256"):
        cat.download_model(name, tmp_path / "b")
    reported = None  # the Hub said nothing: unverifiable, so not kept
    with pytest.raises(ModelFileError, match="could not be verified"):
        cat.download_model(name, tmp_path / "c")
    assert list((tmp_path / "b").iterdir()) == [] and list((tmp_path / "c").iterdir()) == []


def test_only_known_files_and_never_without_asking(tmp_path, monkeypatch):
    monkeypatch.setattr(cat, "_fetch_url", lambda *a: pytest.fail("network touched"))
    with pytest.raises(ModelFileError, match="not a file SurgSora knows"):
        cat.download_model("evil.pth", tmp_path)
    from surgsora.cli import resolve_generate_models, MissingModels

    with pytest.raises(MissingModels):  # a missing model is listed, never fetched
        resolve_generate_models(tmp_path)
