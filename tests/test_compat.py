"""The seed library's builder API on top of batch_llm."""

from __future__ import annotations

from pydantic import BaseModel

from batchata_df.compat import Batch


class Invoice(BaseModel):
    number: str
    total: float


def test_builder_runs_jobs_and_keeps_failures(emu, tmp_path):
    batch = (
        Batch(results_dir=tmp_path / "out", items_per_batch=2)
        .set_default_params(model="gpt-4.1-mini", temperature=0.0)
        .add_cost_limit(usd=5.0)
        .add_time_limit(minutes=5)
    )
    for i in range(3):
        batch.add_job(prompt=f"Extract invoice {i}", response_model=Invoice)
    batch.add_job(prompt="[[emulator:invalid]]", response_model=Invoice)
    batch.add_job(messages=[{"role": "user", "content": "Say hi"}])
    run = batch.run()
    results = run.results()
    assert len(results["completed"]) == 4
    assert len(results["failed"]) == 1
    assert isinstance(results["completed"][0].parsed_response, Invoice)
    assert results["failed"][0].error.startswith("schema_validation")
    texts = [r for r in results["completed"] if isinstance(r.parsed_response, str)]
    assert len(texts) == 1
    r = results["completed"][0]
    r.save_to_json(tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text().startswith("{")
    assert (tmp_path / "out" / "state").is_dir()  # results are never deleted
    # Running again pays nothing twice.
    before = len([e for e in emu.log() if e["method"] == "POST"])
    batch.run()
    assert len([e for e in emu.log() if e["method"] == "POST"]) == before
