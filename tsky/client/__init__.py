"""The programmatic API used by the CLI, the benchmarks and users' own code."""
