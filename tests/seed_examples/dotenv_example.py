# The seed README's .env example, unchanged apart from the import line.
from dotenv import load_dotenv
load_dotenv()
from batchata_df.compat import Batch
# Your API keys will now be loaded from .env
