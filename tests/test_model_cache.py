"""The loader's model cache: the same unchanged files give the same loaded modules; changed files are read again;
a failed load leaves nothing behind; at most ``capacity`` models are held; a switch of model gives the C heap's free
memory back to the system."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest


@pytest.fixture
def cache_module(pack):
    return pack.nodes.model_cache


@pytest.fixture
def fresh_cache(pack, monkeypatch, cache_module):
    """The loader's cache, empty for this test (and the one it replaced restored after)."""
    cache = cache_module.ModelCache(capacity=1)
    monkeypatch.setattr(pack.nodes.loader, "MODEL_CACHE", cache)
    return cache


def load(pack, path):
    return pack.nodes.loader.AltDiffusionLoader.load_path(path, "fp32")


def test_signature_changes_when_any_file_changes(cache_module, m9_folder, tmp_path):
    folder = tmp_path / "m9"
    shutil.copytree(m9_folder, folder)
    before = cache_module.disk_signature(folder)
    assert cache_module.disk_signature(folder) == before  # stable

    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    stat = weights.stat()
    weights.write_bytes(weights.read_bytes())  # same bytes, rewritten: a new mtime
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    rewritten = cache_module.disk_signature(folder)
    assert rewritten != before

    with weights.open("r+b") as f:
        f.truncate(stat.st_size - 10)
    assert cache_module.disk_signature(folder) not in {before, rewritten}

    truncated, truncated_stat = cache_module.disk_signature(folder), weights.stat()
    time.sleep(0.05)  # past the filesystem's timestamp tick
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    with weights.open("r+b") as f:  # other bytes, same size, in place (same inode) …
        f.write(data)
    os.utime(weights, ns=(truncated_stat.st_atime_ns, truncated_stat.st_mtime_ns))  # … and the old mtime put back
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (truncated_stat.st_size, truncated_stat.st_mtime_ns)
    assert cache_module.disk_signature(folder) != truncated  # the ctime moved, which no user can set back

    single = tmp_path / "model.safetensors"
    single.write_bytes(b"x" * 10)
    assert cache_module.disk_signature(single) != cache_module.disk_signature(folder)
    with pytest.raises(FileNotFoundError):
        cache_module.disk_signature(tmp_path / "missing")


def test_same_files_same_modules_changed_files_reloaded(pack, fresh_cache, m9_folder, tmp_path):
    folder = tmp_path / "m9"
    shutil.copytree(m9_folder, folder)
    first = load(pack, folder)
    again = load(pack, folder)
    assert all(a is b for a, b in zip(first[:3], again[:3], strict=True))
    assert len(fresh_cache) == 1

    unet_config = folder / "unet" / "config.json"
    unet_config.write_text(unet_config.read_text())  # touched on disk: read again, never served stale
    os.utime(unet_config, ns=(0, unet_config.stat().st_mtime_ns + 1_000_000))
    reloaded = load(pack, folder)
    assert reloaded[0] is not first[0]
    assert len(fresh_cache) == 1  # the stale copy was dropped, not kept beside the new one


def test_failed_load_is_not_cached_and_the_good_model_loads_after(pack, fresh_cache, m9_folder, tmp_path):
    folder = tmp_path / "m9"
    shutil.copytree(m9_folder, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(pack.altdiff_core.ModelFormatError, match="diffusion_pytorch_model.safetensors"):
        load(pack, folder)
    assert len(fresh_cache) == 0
    weights.write_bytes(good)
    assert load(pack, folder)[0].module is not None
    assert len(fresh_cache) == 1


def test_capacity_bounds_the_models_held(cache_module):
    cache = cache_module.ModelCache(capacity=2)
    loads = []

    def loader(value):
        def load():
            loads.append(value)
            return value

        return load

    for key in ("a", "b", "a", "c", "b"):
        cache.get_or_load(key, loader(key))
    assert loads == ["a", "b", "c", "b"]  # "a" was used again before "c", so "b" went first
    assert len(cache) == 2
    with pytest.raises(ValueError, match="capacity"):
        cache_module.ModelCache(capacity=-1)


def test_is_changed_follows_the_files(pack, m9_folder, tmp_path, monkeypatch):
    root = tmp_path / "models"
    shutil.copytree(m9_folder, root / "m9")
    monkeypatch.setattr(pack.nodes.comfy_seam, "model_roots", lambda: [root])
    node = pack.nodes.loader.AltDiffusionLoader
    before = node.IS_CHANGED("m9", "auto")
    assert node.IS_CHANGED("m9", "auto") == before
    config = root / "m9" / "vae" / "config.json"
    os.utime(config, ns=(0, config.stat().st_mtime_ns + 1_000_000))
    assert node.IS_CHANGED("m9", "auto") != before
    assert node.IS_CHANGED("nowhere", "auto") == "nowhere"  # unresolvable: validation reports it, not IS_CHANGED


def test_a_switch_of_model_gives_the_free_heap_back(
    pack, fresh_cache, cache_module, m9_folder, m18_folder, tmp_path, monkeypatch
):
    """Issue 14 part 6: every load (a switch m9 → m18, a failed load) ends with ``release_free_memory``; a cache hit
    does not pay for it. Without it a server alternating two models kept GBs of freed weights resident."""
    calls = []
    monkeypatch.setattr(cache_module, "release_free_memory", lambda: calls.append(len(fresh_cache)) or True)
    first = load(pack, m9_folder)
    assert calls == [0]  # after the load, before the model is stored: the dropped one is already gone
    assert load(pack, m9_folder)[0] is first[0] and calls == [0]
    load(pack, m18_folder)
    assert calls == [0, 0]
    broken = tmp_path / "m9"
    shutil.copytree(m9_folder, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(pack.altdiff_core.ModelFormatError):
        load(pack, broken)
    assert calls == [0, 0, 0]  # a failed load's scratch is given back too
    fresh_cache.clear()
    assert len(calls) == 4


TRIM_SCRIPT = """
import importlib.util, sys
import torch

spec = importlib.util.spec_from_file_location("model_cache", sys.argv[1])
model_cache = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model_cache)

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

torch.empty(4 * 2**20)  # 16 MB, mmapped, freed at once: glibc raises its mmap threshold to 16 MB (as for a dropped model)
weights = [torch.ones(2**18) for _ in range(400)]  # 400 MB of 1 MB tensors, now in glibc's heap
pinned = torch.ones(2**16)  # 256 KB from the heap's top, kept: the free memory below it can't shrink on its own
before = rss_mb()
del weights
freed = rss_mb()
released = model_cache.release_free_memory()
print(before, freed, rss_mb(), released)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap and /proc: Linux only")
def test_release_free_memory_returns_what_glibc_keeps(cache_module):
    """The mechanism behind issue 14 part 6, in a fresh process: 400 MB of 1 MB tensors freed below a live one stay
    resident (glibc keeps them for reuse); ``release_free_memory`` gives them back."""
    if cache_module._malloc_trim() is None:
        pytest.skip("no malloc_trim in this C library (not glibc)")
    command = [sys.executable, "-c", TRIM_SCRIPT, cache_module.__file__]
    before, freed, after, released = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
    before, freed, after = float(before), float(freed), float(after)
    assert freed > before - 100, (before, freed)  # freed, yet still resident
    assert released == "True" and after < freed - 300, (before, freed, after)
