"""ultralytics' label cache, kept in the run folder.

ultralytics' detection datasets scan the label files once and save the result as ``<label folder>.cache`` beside
them (``labels/train.cache``), inside the user's dataset. yoloprune never modifies its inputs, so its trainer builds
datasets inside ``label_cache_in(run folder)``, which moves that file (read and written) into the run folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FOLDER = "label_cache"


def cache_file(folder: str | Path, path: str | Path) -> Path:
    """Where the cache ultralytics would keep at ``path`` goes in the run ``folder``: one file per label folder."""
    path = Path(path)
    tag = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return Path(folder) / FOLDER / f"{path.stem}-{tag}{path.suffix}"


@contextmanager
def label_cache_in(folder: str | Path) -> Iterator[Path]:
    """While inside, ultralytics' datasets write their label caches in ``folder/label_cache`` instead of the
    dataset's label folders, and read back only the caches this process wrote: a cache file is a pickle, and one
    found in a dataset or a run folder from elsewhere could run code, so any other is rescanned instead. Use it
    around ``build_dataset`` (every DDP process builds its own datasets)."""
    from ultralytics.data import dataset

    (Path(folder) / FOLDER).mkdir(parents=True, exist_ok=True)
    load, save = dataset.load_dataset_cache_file, dataset.save_dataset_cache_file

    written: set[Path] = set()

    def moved_load(path: Path) -> dict[str, Any]:
        target = cache_file(folder, path)
        if target not in written:
            raise FileNotFoundError(f"{target} was not written by this run")  # ultralytics rescans the labels
        return load(target)

    def moved_save(prefix: str, path: Path, x: dict[str, Any], version: str) -> None:
        target = cache_file(folder, path)
        save(prefix, target, x, version)
        written.add(target)

    dataset.load_dataset_cache_file, dataset.save_dataset_cache_file = moved_load, moved_save
    try:
        yield Path(folder) / FOLDER
    finally:
        dataset.load_dataset_cache_file, dataset.save_dataset_cache_file = load, save
