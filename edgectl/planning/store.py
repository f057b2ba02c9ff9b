"""The profile store: profile records on disk, per inventory, host, model and input.

    <root>/<inventory digest, 16 hex>/compute/<host>/<model>-<CxHxW>-b<B>.json
    <root>/<inventory digest, 16 hex>/links/<device>[@<shaping>].json

The root is ~/.edgectl/profiles unless EDGECTL_PROFILES or --store says otherwise. Keying
by the inventory's digest means a changed fleet (an address, a user, a role) is measured
afresh. A record is reused while it is fresh (younger than max_age) and of this version;
anything else counts as missing. A link measured while edgectl's shaping was applied is
stored under that shaping's label (edgectl.network.shaping_state.applied_label, passed in
by the layer above), so a plan made under one bandwidth never reuses another's measurement.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from profiles.records import ComputeProfile, LinkProfile, ProfileFormatError

DEFAULT_ROOT = "~/.edgectl/profiles"
DEFAULT_MAX_AGE_S = 24 * 3600.0


def default_root() -> str:
    return os.environ.get("EDGECTL_PROFILES", DEFAULT_ROOT)


@dataclass(frozen=True)
class ProfileStore:
    root: Path
    inventory_digest: str
    max_age_s: float = DEFAULT_MAX_AGE_S

    @classmethod
    def open(cls, root: str | None, inventory_digest: str,
             max_age_s: float = DEFAULT_MAX_AGE_S) -> ProfileStore:
        return cls(Path(root or default_root()).expanduser(), inventory_digest, max_age_s)

    @property
    def base(self) -> Path:
        return self.root / self.inventory_digest[:16]

    def compute_path(self, host: str, model: str, shape: tuple[int, int, int],
                     batch_size: int) -> Path:
        dims = "x".join(map(str, shape))
        return self.base / "compute" / host / f"{model}-{dims}-b{batch_size}.json"

    def link_path(self, device: str, shaping: str = "") -> Path:
        return self.base / "links" / f"{device}{'@' + shaping if shaping else ''}.json"

    def load_compute(self, host: str, model: str, shape: tuple[int, int, int],
                     batch_size: int) -> ComputeProfile | None:
        data = self._fresh(self.compute_path(host, model, shape, batch_size))
        return ComputeProfile.from_json(data) if data else None

    def load_link(self, device: str, shaping: str = "") -> LinkProfile | None:
        data = self._fresh(self.link_path(device, shaping))
        return LinkProfile.from_json(data) if data else None

    def save_compute(self, profile: ComputeProfile, batch_size: int) -> Path:
        path = self.compute_path(profile.host, profile.model, profile.input_shape, batch_size)
        return _write(path, profile.to_json())

    def save_link(self, profile: LinkProfile, shaping: str = "") -> Path:
        return _write(self.link_path(profile.device, shaping), profile.to_json())

    def records(self) -> list[tuple[Path, dict]]:
        """Every record stored for this inventory, fresh or not, for `profile show`."""
        found = []
        for path in sorted(self.base.rglob("*.json")) if self.base.is_dir() else []:
            try:
                found.append((path, json.loads(path.read_text())))
            except (OSError, ValueError):
                continue
        return found

    def _fresh(self, path: Path) -> dict | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or time.time() - data.get("measured_at", 0) > self.max_age_s:
            return None
        try:
            (ComputeProfile if data.get("kind") == "compute" else LinkProfile).from_json(data)
        except ProfileFormatError:
            return None
        return data


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return path
