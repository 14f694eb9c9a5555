"""Benchmarks that print numbers (`p2p bench NAME`); results are recorded in bench/RESULTS.md."""
