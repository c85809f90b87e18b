# The seed README's first example, unchanged apart from the import line. `files` is the
# reader's own list of documents (the README leaves it to them); the chain is wrapped in
# parentheses as in the seed's own code (the README's text lost its line continuations).
from batchata_df.compat import Batch

files = ["docs/a.txt", "docs/b.txt"]

# Simple batch processing
batch = (
    Batch(results_dir="./output")
    .set_default_params(model="claude-sonnet-4-20250514")  # or "gpt-4.1-2025-04-14" or "gemini-2.5-flash"
    .add_cost_limit(usd=5.0)
)
for file in files:
    batch.add_job(file=file, prompt="Summarize")
run = batch.run()
results = run.results()  # {"completed": [JobResult], "failed": [JobResult], "cancelled": [JobResult]}
# Or preview costs first with dry run
run = batch.run(dry_run=True)  # Shows cost estimates without executing
