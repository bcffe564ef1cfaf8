"""How real-world paired SR benchmarks name their files, and which LR file goes with which HR.

A layout reads a file's name (its path relative to the benchmark folder) and says what the
file is: a `Role` (HR or LR, the key that pairs it, the scale its name declares) or the
reason it fits no role. The layouts (`LAYOUTS`, an explicit registry):

- `realsr`: RealSR (V3), `Canon/Test/4/Canon_001_HR.png` with `Canon_001_LR4.png` in the same
  folder (likewise `Nikon/Test/4/`, and the x2 / x3 folders `2/`, `3/`). Key: folder + the
  name before `_HR` / `_LR<n>`; `<n>` is the scale the name declares.
- `drealsr`: DRealSR, `Test_x4/test_HR/DSC_1454_x1.png` with `Test_x4/test_LR/DSC_1454_x4.png`.
  Key: the folder above test_HR / test_LR + the name before `_x1` / `_x<n>`.
- `hr-lr-folders`: the 512 centre-crop test sets of StableSR / OSEDiff (`RealSR/test_HR/*.png`
  with `RealSR/test_LR/*.png`, identical names) and any `HR/` + `LR/` pair of sibling folders.
  Key: the folder above + the file name without its extension; the scale comes from the sizes.

Every layout skips a scale folder of another scale (`2/`, `x2/`, `Test_x2/` under --scale 4):
RealSR and DRealSR ship all scales side by side.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

_SCALE_FOLDER = re.compile(r"(?:test_)?x?(\d{1,2})", re.IGNORECASE)
_REALSR_HR, _REALSR_LR = re.compile(r"(.+)_HR"), re.compile(r"(.+)_LR(\d+)")
_DREALSR_HR, _DREALSR_LR = re.compile(r"(.+)_x1"), re.compile(r"(.+)_x(\d+)")
HR_FOLDERS, LR_FOLDERS = ("test_hr", "hr"), ("test_lr", "lr")


@dataclass(frozen=True)
class Role:
    """What one file is in a layout: `side` "hr" or "lr", the `key` its partner shares, and the
    `scale` an LR file's name declares (None when the name declares none: HR files, hr-lr-folders)."""

    side: str
    key: str
    scale: int | None = None


@dataclass(frozen=True)
class Layout:
    """One benchmark naming: `role` gives a file's Role or the reason it has none; `partner`
    names the file a Role's missing partner would be (for the quarantine reason)."""

    name: str
    summary: str
    role: Callable[[str], Role | str]
    partner: Callable[[Role, int], str]


def other_scale_folder(name: str, scale: int) -> str | None:
    """The reason to skip `name` when a folder above it is a scale folder of another scale
    (`2/`, `x3/`, `Test_x2/`), else None."""
    for folder in PurePosixPath(name).parent.parts:
        match = _SCALE_FOLDER.fullmatch(folder)
        if match and int(match.group(1)) != scale:
            return f"in the x{match.group(1)} folder {folder}/ (this ingest pairs x{scale}; --scale to change)"
    return None


def _join(folder: PurePosixPath, stem: str) -> str:
    return str(folder / stem) if str(folder) != "." else stem


def _realsr_role(name: str) -> Role | str:
    path = PurePosixPath(name)
    if match := _REALSR_HR.fullmatch(path.stem):
        return Role("hr", _join(path.parent, match.group(1)))
    if match := _REALSR_LR.fullmatch(path.stem):
        return Role("lr", _join(path.parent, match.group(1)), int(match.group(2)))
    return "named neither <name>_HR nor <name>_LR<scale> (RealSR naming)"


def _realsr_partner(role: Role, scale: int) -> str:
    return f"{role.key}_LR{scale}.*" if role.side == "hr" else f"{role.key}_HR.*"


def _drealsr_role(name: str) -> Role | str:
    path = PurePosixPath(name)
    folder = path.parent.name.lower()
    if folder == "test_hr":
        if match := _DREALSR_HR.fullmatch(path.stem):
            return Role("hr", _join(path.parent.parent, match.group(1)))
        return "an HR file not named <name>_x1 (DRealSR naming)"
    if folder == "test_lr":
        if match := _DREALSR_LR.fullmatch(path.stem):
            return Role("lr", _join(path.parent.parent, match.group(1)), int(match.group(2)))
        return "an LR file not named <name>_x<scale> (DRealSR naming)"
    return "not in a test_HR/ or test_LR/ folder"


def _drealsr_partner(role: Role, scale: int) -> str:
    folder, _, stem = role.key.rpartition("/")
    prefix = f"{folder}/" if folder else ""
    return f"{prefix}test_LR/{stem}_x{scale}.*" if role.side == "hr" else f"{prefix}test_HR/{stem}_x1.*"


def _folders_role(name: str) -> Role | str:
    path = PurePosixPath(name)
    folder = path.parent.name.lower()
    if folder in HR_FOLDERS:
        return Role("hr", _join(path.parent.parent, path.stem))
    if folder in LR_FOLDERS:
        return Role("lr", _join(path.parent.parent, path.stem))
    return "not in a test_HR/ or test_LR/ (HR/ or LR/) folder"


def _folders_partner(role: Role, scale: int) -> str:
    folder, _, stem = role.key.rpartition("/")
    prefix = f"{folder}/" if folder else ""
    return f"{prefix}{'test_LR' if role.side == 'hr' else 'test_HR'}/{stem}.*"


LAYOUTS: dict[str, Layout] = {
    "realsr": Layout("realsr", "RealSR V3: <camera>/Test/<scale>/<name>_HR.png beside <name>_LR<scale>.png",
                     _realsr_role, _realsr_partner),
    "drealsr": Layout("drealsr", "DRealSR: Test_x<scale>/test_HR/<name>_x1.png and test_LR/<name>_x<scale>.png",
                      _drealsr_role, _drealsr_partner),
    "hr-lr-folders": Layout("hr-lr-folders", "StableSR / OSEDiff crops: test_HR/<name>.png and test_LR/<name>.png "
                                             "(or HR/ and LR/), identical names", _folders_role, _folders_partner),
}


def paired_keys(layout: Layout, names: list[str], scale: int) -> int:
    """How many keys of `names` have both an HR file and an LR file of `scale` under `layout`."""
    sides: dict[str, set[str]] = {}
    for name in names:
        if other_scale_folder(name, scale):
            continue
        role = layout.role(name)
        if isinstance(role, Role) and role.scale in (None, scale):
            sides.setdefault(role.key, set()).add(role.side)
    return sum(found == {"hr", "lr"} for found in sides.values())


def detect_layout(names: list[str], scale: int, where: str) -> Layout:
    """The layout under which most files pair up; ValueError naming the layouts when none pairs any."""
    counts = {name: paired_keys(layout, names, scale) for name, layout in LAYOUTS.items()}
    best = max(counts, key=lambda name: counts[name])  # dict order breaks ties
    if counts[best] == 0:
        tried = "; ".join(f"{layout.name}: {layout.summary}" for layout in LAYOUTS.values())
        raise ValueError(f"paired benchmark {where}: no HR/LR pair of x{scale} in any known layout among its "
                         f"{len(names)} image files ({tried}); check the folder and --scale, or pass --layout")
    return LAYOUTS[best]
