"""No input crashes the loader: every field, given every odd value, loads or raises a SpecError."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tsky.spec.errors import SpecError
from tsky.spec.loader import apply_overrides, load_pipeline, load_pool
from tsky.spec.task import fields_at

ODD_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2.5,
    float("inf"),
    float("nan"),
    10**30,
    "",
    "x",
    "1+",
    "a:b:c",
    "none",
    "*",
    "-",
    [],
    {},
    [1],
    ["x"],
    {"a": None},
    {"a": [1]},
]


def loads_or_spec_error(document: Any) -> None:
    with contextlib.suppress(SpecError):
        load_pipeline(yaml.safe_dump(document))


def documents() -> list[Any]:
    out: list[Any] = []
    for value in ODD_VALUES:
        out += [{key: value} for key in fields_at(())[0]]
        for key in fields_at(("resources",))[0]:
            out += [
                {"resources": {key: value}},
                {"resources": {"any_of": [{key: value}, {"cpus": 1}]}},
                {"resources": {key: value, "ordered": [{"cpus": 1}]}},
            ]
        out += [{"resources": {"job_recovery": {k: value}}} for k in fields_at(("resources", "job_recovery"))[0]]
        out += [{"file_mounts": {"/a": {"name": "b", k: value}}} for k in fields_at(("file_mounts", "/a"))[0]]
        out += [{"pool": {"workers": 1, k: value}} for k in fields_at(("pool",))[0]]
        out += [
            {"file_mounts": {"/a": value}},
            {"workdir": {"url": value}},
            {"envs": {"A": value}},
            {"secrets": {"A": value}},
            {"secrets": [value]},
        ]
    return out


def test_every_field_with_every_odd_value() -> None:
    for document in documents():
        loads_or_spec_error(document)


def test_pool_sections_with_odd_values(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    for value in ODD_VALUES:
        for key in fields_at(("pool",))[0]:
            path.write_text(yaml.safe_dump({"pool": {"workers": 1, key: value}}))
            with contextlib.suppress(SpecError):
                load_pool(path)


@pytest.mark.parametrize(
    "flag",
    ["infra", "cpus", "memory", "gpus", "instance_type", "use_spot", "num_nodes", "disk_size", "image_id", "workdir"],
)
def test_overrides_with_odd_values(flag: str) -> None:
    pipeline = load_pipeline("run: x\nresources:\n  any_of: [{use_spot: true}, {cpus: 2}]\n")
    for value in ODD_VALUES:
        with contextlib.suppress(SpecError):
            apply_overrides(pipeline, **{flag: value})
