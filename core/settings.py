"""Server settings, read from environment variables so a deployment can change them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

__all__ = ["Settings", "get_settings"]


def _int_env(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"The setting {name} must be a whole number, not {raw!r}.") from None
    if value < minimum:
        raise ConfigError(f"The setting {name} must be at least {minimum}.")
    return value


def _memory_mb() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    except (AttributeError, ValueError, OSError):  # not POSIX: assume a small machine
        return 8192


def _default_run_inputs_mb(slots: int) -> int:
    """A run's encoded images may take a quarter of the memory each training slot gets, at most
    2 GB: the worker also holds the model, its gradients and the feature caches."""
    return max(64, min(2048, _memory_mb() // (4 * max(1, slots))))


def _default_slots() -> int:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass(frozen=True)
class Settings:
    """Where runs live and how much of the server they may take."""

    data_dir: Path
    max_concurrent_runs: int
    disk_cap_mb: int
    max_queued_per_person: int = 2  # runs one person may have training or waiting at once
    processes_per_run: int = 1  # above 1, a run trains under torchrun with this many processes (one per GPU)
    max_run_inputs_mb: int = 2048  # one run's images once encoded at its input size
    upload_quota_mb: int = 300  # weights files one person may keep uploaded
    worker_recycle_mb: int = 2048  # a worker process above this after a run is replaced by a fresh one

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(os.environ.get("TRANSFER_LAB_DATA_DIR", "transfer-lab-data")).expanduser()
        slots = _int_env("TRANSFER_LAB_MAX_CONCURRENT_RUNS", _default_slots(), 1)
        return cls(
            data_dir=data_dir,
            max_concurrent_runs=slots,
            disk_cap_mb=_int_env("TRANSFER_LAB_DISK_CAP_MB", 2048, 10),
            # one training and one waiting: a person's clicks cannot make the whole class wait
            max_queued_per_person=_int_env("TRANSFER_LAB_MAX_QUEUED_PER_PERSON", 2, 1),
            processes_per_run=_int_env("TRANSFER_LAB_PROCESSES_PER_RUN", 1, 1),
            max_run_inputs_mb=_int_env("TRANSFER_LAB_MAX_RUN_INPUTS_MB", _default_run_inputs_mb(slots), 1),
            upload_quota_mb=_int_env("TRANSFER_LAB_UPLOAD_QUOTA_MB", 300, 1),
            worker_recycle_mb=_int_env("TRANSFER_LAB_WORKER_RECYCLE_MB", 2048, 100),
        )


def get_settings() -> Settings:
    return Settings.from_env()
