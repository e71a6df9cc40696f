"""What a prepared folder's split really guarantees, from where its patient ids came from.

A folder of radiographs without patient ids makes every image its own "patient": a patient-level split is then
an image-level split, and images of one person can sit in training and test. Sources record where each
record's patient id came from (`patient_id_origins`, one of ORIGINS -> count); `prepare` stores that and the
effective split unit in prepare.json, and `data info`, the report and the privacy audit word their claims
from it.
"""

from __future__ import annotations

from typing import Any

DICOM = "DICOM PatientID"
NIH_CSV = "NIH CSV"
NIH_NAME = "NIH file name"
SUB_FOLDER = "sub-folder"
RENDERED = "rendered (one CT)"
NONE = "none"
ORIGINS = (DICOM, NIH_CSV, NIH_NAME, SUB_FOLDER, RENDERED, NONE)

UNIT_PATIENT = "patient"
UNIT_IMAGE_UNKNOWN = "image: patient ids unknown"
UNIT_IMAGE = "image"
UNIT_POSE_GROUP = "pose group"
UNIT_MIXED = "patient where known, image elsewhere"


def effective_split_unit(split_by: str, origins: dict[str, int] | None, source: str = "") -> str:
    """The unit the split really keeps together (see the UNIT_* names); "" when the origin was not recorded
    (folders prepared before it was)."""
    if source == "default" or (origins and set(origins) == {RENDERED}):
        return UNIT_POSE_GROUP
    if split_by == "image":
        return UNIT_IMAGE
    if not origins:
        return ""
    unknown = int(origins.get(NONE, 0))
    if unknown and unknown == sum(int(n) for n in origins.values()):
        return UNIT_IMAGE_UNKNOWN
    return UNIT_MIXED if unknown else UNIT_PATIENT


def optimistic(unit: str) -> bool:
    """True when images of one patient may sit in training and test (scores may be optimistic)."""
    return unit in (UNIT_IMAGE, UNIT_IMAGE_UNKNOWN, UNIT_MIXED)


def origins_text(origins: dict[str, int] | None) -> str:
    if not origins:
        return "not recorded"
    return ", ".join(f"{origin} ({count} images)" for origin, count in sorted(origins.items()))


def split_sentence(data: dict[str, Any]) -> str:
    """One sentence on the split policy for `data info` and the report, never claiming more than is known.

    `data` holds `split_by`, `source`, and (when recorded) `patient_id_origin` and `split_unit`."""
    unit = data.get("split_unit") or effective_split_unit(
        str(data.get("split_by", "")), data.get("patient_id_origin"), str(data.get("source", ""))
    )
    origins = origins_text(data.get("patient_id_origin"))
    if unit == UNIT_IMAGE_UNKNOWN:
        return (
            "Split by image: patient ids unknown (no DICOM PatientID, NIH metadata, NIH-style file name or "
            "patient sub-folder), so each image counted as its own patient; images of one patient may sit in "
            "training and test, and test scores may be optimistic. `meddenoise data leaks DIR` lists likely "
            "same-patient pairs across splits."
        )
    if unit == UNIT_MIXED:
        unknown = (data.get("patient_id_origin") or {}).get(NONE, 0)
        return (
            f"Split by patient where the patient is known (patient ids from {origins}); the {unknown} images "
            "without a patient id were split as single images, so they may share a patient with images in "
            "other splits and test scores may be optimistic."
        )
    if unit == UNIT_IMAGE:
        return (
            "Split by image, as in the paper; images of one patient can fall into both training and test, "
            "which flatters test scores."
        )
    if unit == UNIT_POSE_GROUP:
        return (
            "Split by pose group; all rendered default images come from one CT volume, so whole pose groups "
            "are held out and no test image shares its pose group with a training image."
        )
    if unit == UNIT_PATIENT:
        return f"Split by patient (patient ids from {origins}); no patient has images in two splits."
    return (
        "Split by patient; where the patient ids came from was not recorded (prepared by an older version)."
    )
