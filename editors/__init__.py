"""Built-in editors, one self-contained module each; they share code only through msafety_bench.editing."""
