"""Repack a pure-Python wheel without its large data files (used by fetch_wheels.sh).

    python slim_wheel.py IN.whl OUT_DIR LOCAL_LABEL GLOB [GLOB ...]

Every member whose path matches one of the GLOBs (fnmatch, e.g. ``*.jar``) is dropped; the code and
all other files are copied byte for byte. The version gets the local label ``+LOCAL_LABEL`` (in the
file name, the ``.dist-info`` folder and METADATA), so the slimmed wheel never passes for the
original, and RECORD is rewritten with the new hashes. Deterministic: same input, same bytes.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import sys
import zipfile
from pathlib import Path


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def slim(src: Path, out_dir: Path, label: str, patterns: list[str]) -> Path:
    name, version, *rest = src.name[: -len(".whl")].split("-")
    new_version = f"{version}+{label}"
    old_info, new_info = f"{name}-{version}.dist-info", f"{name}-{new_version}.dist-info"
    dst = out_dir / ("-".join([name, new_version, *rest]) + ".whl")
    records: list[str] = []
    dropped = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            path = info.filename
            if path.startswith(old_info + "/"):
                path = new_info + path[len(old_info) :]
            if path == f"{new_info}/RECORD":
                continue
            if any(fnmatch.fnmatch(path, p) for p in patterns):
                dropped += 1
                continue
            data = zin.read(info)
            if path == f"{new_info}/METADATA":
                text = data.decode()
                text = text.replace(f"\nVersion: {version}\n", f"\nVersion: {new_version}\n", 1)
                data = text.encode()
            out = zipfile.ZipInfo(path, date_time=(2020, 2, 2, 0, 0, 0))
            out.external_attr = info.external_attr
            out.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(out, data)
            records.append(f"{path},{_record_hash(data)},{len(data)}")
        records.append(f"{new_info}/RECORD,,")
        rec = zipfile.ZipInfo(f"{new_info}/RECORD", date_time=(2020, 2, 2, 0, 0, 0))
        rec.external_attr = 0o644 << 16
        rec.compress_type = zipfile.ZIP_DEFLATED
        zout.writestr(rec, "\n".join(records) + "\n")
    if dropped == 0:
        raise SystemExit(f"{src.name}: no member matched {patterns}")
    print(f"{dst.name}: dropped {dropped} file(s), {dst.stat().st_size / 2**20:.2f} MiB")
    return dst


if __name__ == "__main__":
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    slim(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:])
