"""NG store: real PNG/JSON files, atomic layout, rotation under the byte cap, full disk."""

from __future__ import annotations

import json
import os
import time

import cv2
import numpy as np
import pytest

from edge.sinks import DiskFullError
from edge.sinks.ng_store import NgStore, NgStoreError

TS = 1_763_700_000.0  # 2025-11-21 UTC


def part(seed: int, shape=(64, 96)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, shape, dtype=np.uint8)  # noise: PNG cannot shrink it much
    mask = np.zeros(shape[:2], np.uint8)
    mask[10:20, 30:50] = 255
    return image, mask


def files_on_disk(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def disk_bytes(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_save_writes_image_mask_and_meta(tmp_path):
    store = NgStore(tmp_path / "ng", max_bytes=10_000_000)
    image, mask = part(1, (64, 96, 3))
    path = store.save("cam0", 42, image, mask, {"capture_ts": TS, "defect_area": np.int64(200), "score": 0.9})
    day = tmp_path / "ng" / "cam0" / time.strftime("%Y%m%d", time.gmtime(TS))
    assert path == day / "0000000042.png"
    assert files_on_disk(day) == ["0000000042.json", "0000000042.png", "0000000042_mask.png"]
    np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), image)
    np.testing.assert_array_equal(cv2.imread(str(day / "0000000042_mask.png"), cv2.IMREAD_UNCHANGED), mask)
    meta = json.loads((day / "0000000042.json").read_text())
    assert meta["camera_id"] == "cam0" and meta["seq"] == 42 and meta["defect_area"] == 200
    assert meta["mask"] == "0000000042_mask.png"
    assert store.saved == 1 and len(store) == 1
    assert store.bytes_used == disk_bytes(tmp_path / "ng")
    assert not list((tmp_path / "ng").rglob("*.tmp"))


def test_rotation_deletes_oldest_and_keeps_under_cap(tmp_path):
    root = tmp_path / "ng"
    image, mask = part(2)
    probe = NgStore(tmp_path / "probe", max_bytes=10_000_000)
    probe.save("cam0", 0, image, mask, {"capture_ts": TS})
    entry_bytes = probe.bytes_used
    cap = int(entry_bytes * 5.5)  # room for 5 entries
    store = NgStore(root, max_bytes=cap)
    for seq in range(12):
        store.save("cam0", seq, *part(seq), {"capture_ts": TS})
        assert store.bytes_used <= cap
        assert disk_bytes(root) == store.bytes_used
    assert store.saved == 12
    assert store.rotated_out == 7
    assert len(store) == 5
    kept = [n for n in files_on_disk(root) if n.endswith(".json")]
    assert [n.rsplit("/", 1)[1] for n in kept] == [f"{s:010d}.json" for s in range(7, 12)]


def test_restart_rebuilds_index_oldest_first(tmp_path):
    root = tmp_path / "ng"
    store = NgStore(root, max_bytes=10_000_000)
    for seq in range(4):
        store.save("cam0", seq, *part(seq), {"capture_ts": TS})
    # Fix the age order on disk so the scan must use it (mtime), not the file names.
    day = root / "cam0" / time.strftime("%Y%m%d", time.gmtime(TS))
    for age, seq in enumerate([3, 0, 1, 2]):
        os.utime(day / f"{seq:010d}.json", ns=(1_000_000_000 * (age + 1),) * 2)
    # Leftovers of a crash mid-save: a temporary file and a PNG whose JSON never landed.
    (day / "0000000099.png.tmp").write_bytes(b"half")
    (day / "0000000098.png").write_bytes(b"orphan")
    used = store.bytes_used
    again = NgStore(root, max_bytes=used)  # exactly full
    assert len(again) == 4 and again.bytes_used == used
    assert not (day / "0000000099.png.tmp").exists() and not (day / "0000000098.png").exists()
    again.save("cam1", 7, *part(7), {"capture_ts": TS})
    assert not (day / "0000000003.json").exists()  # oldest by mtime went first
    assert (day / "0000000000.json").exists()
    assert again.bytes_used <= used


def test_rotation_removes_empty_day_folders(tmp_path):
    root = tmp_path / "ng"
    image, mask = part(3)
    store = NgStore(root, max_bytes=1)
    store.max_bytes = 10_000_000
    store.save("cam0", 1, image, mask, {"capture_ts": TS})
    store.max_bytes = store.bytes_used
    store.save("cam0", 2, image, mask, {"capture_ts": TS + 86_400})  # next day
    assert len(store) == 1 and store.rotated_out == 1
    assert [p.name for p in (root / "cam0").iterdir()] == [time.strftime("%Y%m%d", time.gmtime(TS + 86_400))]


def test_same_seq_replaces_the_entry(tmp_path):
    store = NgStore(tmp_path, max_bytes=10_000_000)
    store.save("cam0", 5, *part(1), {"capture_ts": TS})
    store.save("cam0", 5, *part(2), {"capture_ts": TS})
    assert len(store) == 1 and store.bytes_used == disk_bytes(tmp_path)


def test_bad_inputs_are_refused(tmp_path):
    store = NgStore(tmp_path, max_bytes=10_000)
    image, mask = part(1)
    for bad in ["", "../etc", "a/b", ".hidden"]:
        with pytest.raises(NgStoreError, match="camera id"):
            store.save(bad, 1, image, mask, {})
    with pytest.raises(NgStoreError, match=r"raise sinks\.ng_store_max_mb"):
        store.save("cam0", 1, *part(1, (256, 256)), {})
    with pytest.raises(ValueError, match="uint8"):
        store.save("cam0", 1, image.astype(np.float32), mask, {})
    with pytest.raises(NgStoreError, match="positive"):
        NgStore(tmp_path, max_bytes=0)
    assert store.saved == 0 and not list(tmp_path.rglob("*.png"))


def test_real_full_disk_raises_disk_full_error(tiny_fs):
    root = tiny_fs(64 * 1024)
    store = NgStore(root / "ng", max_bytes=10_000_000)  # the cap is bigger than the disk
    with pytest.raises(DiskFullError, match="NG store") as info:
        for seq in range(50):
            store.save("cam0", seq, *part(seq, (64, 128)), {"capture_ts": TS})
    assert "free space" in str(info.value)
    # Nothing half-written stays behind, and the index matches the disk.
    assert not list((root / "ng").rglob("*.tmp"))
    assert store.bytes_used == disk_bytes(root / "ng")
    assert len(list((root / "ng").rglob("*.json"))) == store.saved


def test_the_ui_gallery_pages_stay_put_while_the_line_stores_more(tmp_path):
    """The UI lists this store newest first while the line writes it: page 2, asked with page
    1's ``as_of``, holds the entries right after page 1's even when newer ones came between."""
    from edge.config import parse_config
    from edge.ui.state import LineState

    store = NgStore(tmp_path / "ng", max_bytes=10_000_000)
    image, mask = part(3)

    def save(seq: int) -> None:
        path = store.save("cam0", seq, image, mask, {"capture_ts": TS + seq})
        # distinct write times whatever the file system's clock resolution
        os.utime(path.with_suffix(".json"), ns=(int((TS + seq) * 1e9),) * 2)

    for seq in range(1, 8):
        save(seq)
    state = LineState(
        parse_config({"cameras": [{"id": "cam0"}], "sinks": {"ng_store": str(tmp_path / "ng")}})
    )
    seqs = lambda page: [e["meta"]["seq"] for e in page["entries"]]  # noqa: E731
    first = state.ng_page(per_page=3)
    assert seqs(first) == [7, 6, 5] and first["total"] == 7
    save(8)
    save(9)  # the line goes on
    second = state.ng_page(per_page=3, page=2, as_of=first["as_of"])
    assert seqs(second) == [4, 3, 2] and second["total"] == 7
    assert seqs(state.ng_page(per_page=3, page=2)) == [6, 5, 4]  # without it, page 1 again in part
    assert state.ng_page(per_page=3)["total"] == 9
