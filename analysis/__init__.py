"""Built-in analyses, written against the public plugin API only (copy them freely)."""
