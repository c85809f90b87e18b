"""A compat ``Batch`` of many jobs with a ``response_model`` reads the model's schema once.

Each job's group key holds its response model's name and shape (a fingerprint of its wire
schema). Built again for every job, that was 0.3 ms a job: 33 s at ``run()`` for 100,000
jobs, and as much again during ``add_job`` while a second Batch on the same
``results_dir`` was live (each number is checked against the other Batch's job).
"""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import batchata_df.compat as compat
from batchata_df.compat import Batch


class Answer(BaseModel):
    label: str


class Other(BaseModel):
    label: int


@pytest.fixture
def schemas_built(monkeypatch: pytest.MonkeyPatch) -> list[type[BaseModel]]:
    """The models whose :class:`AnswerSchema` compat builds, one entry per build."""
    built: list[type[BaseModel]] = []
    real = compat.AnswerSchema

    def counting(model, *args, **kwargs):  # type: ignore[no-untyped-def]
        built.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(compat, "AnswerSchema", counting)
    return built


def test_add_job_beside_another_batch_reads_each_model_s_schema_once(tmp_path, schemas_built):
    first = Batch(results_dir=tmp_path).set_default_params(model="gpt-4.1-mini")
    second = Batch(results_dir=tmp_path).set_default_params(model="gpt-4.1-mini")
    for i in range(500):
        first.add_job(prompt=f"a {i}", response_model=Answer)
    for i in range(500):  # each number is checked against first's job of that number
        second.add_job(prompt=f"b {i}", response_model=Answer)
        second.add_job(prompt=f"c {i}", response_model=Other)
    assert second._jobs[0].job_id == "job-000500"  # numbered after first's
    assert sorted(m.__name__ for m in schemas_built) == ["Answer", "Other"]


def test_group_keys_still_tell_models_of_one_name_and_another_shape_apart(tmp_path):
    def model(kind: type) -> type[BaseModel]:
        class Answer(BaseModel):
            label: kind  # type: ignore[valid-type]

        return Answer

    batch = Batch(results_dir=tmp_path).set_default_params(model="gpt-4.1-mini")
    batch.add_job(prompt="a", response_model=model(str))
    batch.add_job(prompt="b", response_model=model(int))
    batch.add_job(prompt="c", response_model=model(str))
    keys = [compat._group_key(job) for job in batch._jobs]
    assert keys[0] != keys[1] and keys[0] == keys[2]
