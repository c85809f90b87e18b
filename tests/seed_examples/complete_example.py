# The seed README's complete example, unchanged apart from the import line and the seed's
# two slips: the nested double quotes inside f-strings (a SyntaxError before Python 3.12)
# are single quotes, and `.page` is read from each citation of a field's list (the seed's
# own type for citation_mappings is field -> List[Citation]).
from batchata_df.compat import Batch
from pydantic import BaseModel
from dotenv import load_dotenv

load_dotenv()  # Load API keys from .env


# Define structured output
class InvoiceAnalysis(BaseModel):
    invoice_number: str
    total_amount: float
    vendor: str
    payment_status: str


# Create batch configuration
batch = (
    Batch(
        results_dir="./invoice_results",
        max_parallel_batches=1,
        items_per_batch=3
    )
    .set_state(file="./invoice_state.json", reuse_state=False)
    .set_default_params(model="claude-sonnet-4-20250514", temperature=0.0)
    .add_cost_limit(usd=5.0)
    .add_time_limit(minutes=10)  # Time limit of 10 minutes
    .set_verbosity("warn")
)

# Add jobs with structured output and citations
invoice_files = ["path/to/invoice1.pdf", "path/to/invoice2.pdf", "path/to/invoice3.pdf"]
for invoice_file in invoice_files:
    batch.add_job(
        file=invoice_file,
        prompt="Extract the invoice number, total amount, vendor name, and payment status.",
        response_model=InvoiceAnalysis,
        enable_citations=True
    )

# Execute with rich progress display
print("Starting batch processing...")
run = batch.run(print_status=True)

# Or use custom progress callback
run = batch.run(print_status=True)

# Get results
results = run.results()

# Process successful results
for result in results["completed"]:
    analysis = result.parsed_response
    citations = result.citation_mappings
    print(f"\nInvoice: {analysis.invoice_number} (page: {[c.page for c in citations.get('invoice_number')]})")
    print(f" Vendor: {analysis.vendor} (page: {[c.page for c in citations.get('vendor')]})")
    print(f" Total: ${analysis.total_amount:.2f} (page: {[c.page for c in citations.get('total_amount')]})")
    print(f" Status: {analysis.payment_status} (page: {[c.page for c in citations.get('payment_status')]})")
    # Save each result to JSON file
    result.save_to_json(f"./invoice_results/{result.job_id}.json")

# Process failed/cancelled results
for result in results["failed"]:
    print(f"\nJob {result.job_id} failed: {result.error}")
for result in results["cancelled"]:
    print(f"\nJob {result.job_id} was cancelled: {result.error}")
