"""bulkd: stream large tabular files into validated, chunked gzip NDJSON and deliver them to Lexer."""

__version__ = "0.1.0"
__all__ = ["__version__"]
