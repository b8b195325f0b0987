"""Alignment evaluators, results tables, loggers and reports for asyndm run folders."""
