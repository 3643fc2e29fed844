"""A model package on disk: a folder with ONNX graphs, a manifest and engines.

models/dagm-class1/
    model.onnx            FP32, dynamic batch
    model.fp16.onnx       optional, written behind the FP16 gate
    manifest.json
    engines/<gpu>-sm<cc>-trt<version>.plan (+ .plan.json)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from converter.manifest import ManifestError, ModelManifest

PRECISIONS = ("fp32", "fp16", "int8")


class PackageFileError(ManifestError):
    """A file of the package is not the one its manifest was written with."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so a large graph does not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelPackage:
    """An opened, validated model package."""

    root: Path
    manifest: ModelManifest

    @classmethod
    def open(cls, root: str | Path) -> ModelPackage:
        root = Path(root)
        if not root.is_dir():
            msg = f"{root}: no such model package folder; create one with `lineside export`"
            raise ManifestError(msg)
        manifest = ModelManifest.load(root)
        package = cls(root=root, manifest=manifest)
        fp32 = package.onnx_path("fp32")
        if not fp32.is_file():
            msg = f"{fp32}: the manifest names this FP32 graph but it is missing; re-run `lineside export`"
            raise ManifestError(msg)
        return package

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def engines_dir(self) -> Path:
        return self.root / "engines"

    def onnx_path(self, precision: str = "fp32") -> Path:
        """Path of the ONNX graph for ``precision``; raises if the package has none."""
        if precision not in PRECISIONS:
            msg = f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}"
            raise ValueError(msg)
        name = self.manifest.files.get(precision)
        if name is None:
            have = ", ".join(sorted(self.manifest.files))
            msg = (
                f"{self.root}: the package has no {precision} graph (it has: {have}); "
                f"make one with `lineside export --precision {precision}`"
            )
            raise ManifestError(msg)
        return self.root / name

    def has_precision(self, precision: str) -> bool:
        name = self.manifest.files.get(precision)
        return name is not None and (self.root / name).is_file()

    def verify(self) -> list[str]:
        """Check every graph the manifest names against the sha256 recorded at export.

        Raises PackageFileError naming the first file that changed. Returns the names that
        have no recorded hash (a schema 1 manifest), which could not be checked. A named
        graph that is absent is left to ``has_precision``/``onnx_path`` callers.
        """
        unchecked = []
        for name in sorted(set(self.manifest.files.values())):
            path = self.root / name
            if not path.is_file():
                continue
            want = self.manifest.files_sha256.get(name)
            if want is None:
                unchecked.append(name)
            elif sha256_file(path) != want:
                msg = (
                    f"{path}: sha256 does not match manifest.json (file changed after export); "
                    "re-run `lineside export`"
                )
                raise PackageFileError(msg)
        return unchecked

    def check_graph_io(self, precision: str = "fp32") -> None:
        """Refuse a graph whose input or output disagrees with the manifest (names, shape, layout, dtype)."""
        self.check_graph_file(self.onnx_path(precision), precision)

    def check_graph_file(self, path: Path, precision: str = "") -> None:
        """``check_graph_io`` for the graph at ``path`` (the one a backend already holds)."""
        from converter.onnx_graph import check_io

        if not path.is_file():
            what = f"this {precision} graph" if precision else "this graph"
            msg = f"{path}: the manifest names {what} but it is missing; re-run `lineside export`"
            raise ManifestError(msg)
        check_io(path, self.manifest)

    def engine_plans(self) -> list[Path]:
        """Every engine plan in the package, whether or not it fits this machine."""
        if not self.engines_dir.is_dir():
            return []
        return sorted(self.engines_dir.glob("*.plan"))
